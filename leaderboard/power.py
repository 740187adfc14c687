"""Power before runs: the smallest primary-endpoint Δ a suite can detect.

    MDΔ = the δ with  P(|T| > t_{1-α/2, n-1}) = power,  T ~ noncentral t(n − 1, δ·√n / σ_d)

for a two-sided paired t-test on n pairs whose differences have standard deviation σ_d (Cohen,
1988, ch. 2). σ_d comes from named pilot runs -- the SD of the paired differences of the pilot
suite's own primary endpoint, read from its committed run export ``leaderboard/<pilot>-runs.csv``
-- never from the runs being planned. The endpoint's test is the exact Wilcoxon signed-rank
test, whose asymptotic efficiency relative to the t-test is 3/π ≈ 0.955 under normality: the
MDΔ stated is the t-test's, and the Wilcoxon needs about 5% more pairs for the same power.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, stats

LEADERBOARD = Path(__file__).resolve().parent


def power_paired_t(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test for true mean difference ``delta``."""
    if n < 2 or sd <= 0:
        return float("nan")
    df, nc = n - 1, delta * np.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return p if np.isfinite(p) else 1.0  # scipy's nct is NaN far in the tail, where the power is 1


def min_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest Δ > 0 detected with probability ``power`` (paired t, two-sided)."""
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    hi = sd
    while power_paired_t(hi, sd, n, alpha) < power:  # bracket the root
        hi *= 2
    return float(optimize.brentq(lambda d: power_paired_t(d, sd, n, alpha) - power, 1e-12, hi))


@dataclass(frozen=True)
class PowerLine:
    n: int
    sd: float
    pilot: str
    pilot_pairs: int
    alpha: float
    power: float
    endpoint: str

    @property
    def mdd(self) -> float:
        return min_detectable(self.sd, self.n, self.alpha, self.power)

    def text(self) -> str:
        return (f"primary endpoint ({self.endpoint}), n = {self.n} pairs; SD of paired differences "
                f"{self.sd:.4f} from pilot `{self.pilot}` ({self.pilot_pairs} pairs of its primary endpoint); "
                f"minimum detectable Δ at {self.power:.0%} power, two-sided α = {self.alpha:g} (paired t): "
                + (f"{self.mdd:.4f} AUC (the exact Wilcoxon test needs ~5% more pairs for the same power)" if self.n >= 2
                   else f"not defined with n = {self.n} (a test needs at least 2 pairs)"))


def pilot_sd(pilot: str, leaderboard_dir: Path = LEADERBOARD) -> tuple[float, int]:
    """SD of the paired differences of ``pilot``'s primary endpoint, from its committed run export."""
    from bench import analysis as AN
    from bench.errors import ConfigError
    from bench.suitefile import load_merged, suite_path
    from leaderboard import aggregate as A
    from leaderboard import collect
    from leaderboard.endpoint import primary_pairs

    csv = leaderboard_dir / f"{pilot}-runs.csv"
    if not csv.is_file():
        raise ConfigError(f"power pilot '{pilot}': no run export {csv}; name a suite whose runs are committed "
                          f"(leaderboard/*-runs.csv)")
    path = suite_path(pilot)
    analysis = AN.parse(load_merged(path).get("analysis"), str(path))  # only its endpoint: no cells, no torch
    if analysis.primary is None:
        raise ConfigError(f"power pilot '{pilot}' declares no analysis.primary: its paired differences are undefined")
    runs = collect.tidy(collect.read_csv(csv))
    pairs = primary_pairs(A.units(runs), analysis)
    d = pairs["d"].to_numpy(dtype=float)
    d = d[np.isfinite(d)]
    return (float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")), len(d)


def power_line(suite, cells, pilot: str | None = None) -> PowerLine | None:
    """The dry run's power line for ``suite`` (None without a primary endpoint or a pilot)."""
    from leaderboard.endpoint import declared_pairs, describe

    a = suite.analysis
    pilot = pilot or (a.power.pilot if a.power else None)
    if a.primary is None or pilot is None:
        return None
    sd, k = pilot_sd(pilot)
    alpha, power = (a.power.alpha, a.power.power) if a.power else (0.05, 0.8)
    return PowerLine(declared_pairs(cells, a), sd, pilot, k, alpha, power, describe(a))
