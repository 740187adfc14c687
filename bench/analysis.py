"""The ``analysis:`` block of a suite: the one place that says what each recipe *is*.

A comparison of DAM with CE is only as good as its declaration of which arm is the treatment,
which arms are controls, and what the primary endpoint is. Everything the leaderboard, the
findings, the search rule and the power line need to know about roles is declared here, once,
and validated like every other key (unknown keys and names are one-line errors with a
did-you-mean). Nothing else decides roles: there is no "objective != ce" rule and no
``recipes.*.family``.

.. code-block:: yaml

    analysis:
      controls: [ce_ft, ce]              # every other recipe is paired with each control, in this order
      families:                          # family -> recipes; `dam` names the DAM treatments
        dam: [aucm_ft]
        control: [ce_ft, ce_ft_dual, ce_ft_pesg]
      decompose:                         # per DAM recipe: the chain of matched controls
        aucm_ft: {adam: ce_ft, sampler: ce_ft_dual, optimizer: ce_ft_pesg}
      primary: {control: matched, protocol: official, selection: ungated}
      secondary_metrics: [test_auprc]
      power: {pilot: confirm}            # minimum detectable Δ in `bench suite --dry-run`
      select: {rule: "...", families: [ce, ce_ft, dam]}   # a search: which families compete
      profiles: {taus: [0, 0.005, 0.01, 0.02, 0.05]}        # performance profiles in the leaderboard

Decomposition. With ``adam`` (CE fine-tuning with Adam on shuffled batches, ``ce_ft``), ``sampler``
(the same CE/Adam step on DualSampler batches at the DAM recipe's sampling rate: the same number
of optimizer steps per epoch as the DAM recipe) and ``optimizer`` (CE with the DAM recipe's own
optimizer, e.g. PESG, on the same batches), the paired differences

    sampler effect   = sampler − adam
    optimizer effect = optimizer − sampler
    loss effect      = DAM − optimizer        (DAM − sampler when there is no optimizer control)

add up to DAM − adam, and only the last one is "what the AUC loss adds".

``primary.control: matched`` means: each DAM recipe against the deepest control of its
decomposition (its optimizer-matched control, else its sampler-matched one), i.e. the loss effect.
``primary.selection``: ``gated`` scores the model validation selected among the source checkpoint
("epoch 0") and the fine-tuned epochs; ``ungated`` the best fine-tuned epoch (>= 1) on validation.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from bench.catalog import TEST_METRICS
from bench import schema as S
from bench.errors import ConfigError
from bench.registry import did_you_mean

DAM = "dam"  # the family name of the DAM treatments
SELECTIONS = ("gated", "ungated")
DECOMPOSITION = ("adam", "sampler", "optimizer")  # loosest control first
PAIRED_METRICS = tuple(TEST_METRICS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Primary(_Strict):
    control: str  # a recipe, or "matched" (each DAM recipe's deepest decomposition control)
    treatment: str = DAM  # "dam" (each dataset's DAM recipe, pooled) or one recipe
    protocol: str = "official"
    selection: Literal["gated", "ungated"] = "gated"
    metric: str = "test_auc"


class Decomposition(_Strict):
    adam: str | None = None
    sampler: str | None = None
    optimizer: str | None = None

    def chain(self) -> list[tuple[str, str]]:
        """(step name, recipe) from the loosest control to the tightest, declared ones only."""
        return [(k, getattr(self, k)) for k in DECOMPOSITION if getattr(self, k)]

    def matched(self) -> str | None:
        """The tightest control: the one whose difference to the DAM recipe is the loss alone."""
        return next((r for _, r in reversed(self.chain()) if _ != "adam"), None)


class Power(_Strict):
    pilot: str  # a suite whose committed runs (leaderboard/<pilot>-runs.csv) give the SD of paired differences
    alpha: float = 0.05
    power: float = 0.8


class Select(_Strict):
    rule: str = "highest mean validation AUC over the search seeds; ties: the configuration listed first"
    families: list[str] | dict[str, list[str]]  # names in analysis.families (a dict declares them here)


class Profiles(_Strict):
    """Performance profiles in the leaderboard (leaderboard.profiles): the τ columns of the table."""
    taus: list[float] = [0.0, 0.005, 0.01, 0.02, 0.05]  # additive gaps in test AUC
    per: list[Literal["seed"]] = []  # extra problem keys: [seed] makes each seed of a dataset a problem

    @property
    def keys(self) -> list[str]:
        return ["dataset", "size", "protocol", *self.per]

    @field_validator("taus")
    @classmethod
    def _taus(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one τ")
        if any(not 0 <= t <= 1 for t in v):
            raise ValueError("each τ must be in [0, 1] (a gap in AUC)")
        if v != sorted(v):
            raise ValueError("τ values must be sorted ascending")
        return v


class Analysis(_Strict):
    controls: list[str] = []
    families: dict[str, list[str]] = {}
    decompose: dict[str, Decomposition] = {}
    primary: Primary | None = None
    secondary_metrics: list[str] = []
    arms: dict[str, str] = {}  # family -> the recipe that is that family's arm (a confirmation of a search)
    power: Power | None = None
    select: Select | None = None
    profiles: Profiles | None = None  # performance profiles in the leaderboard (opt-in)

    # ------------------------------------------------------------------ derived views

    @property
    def dam(self) -> tuple[str, ...]:
        return tuple(self.families.get(DAM, ()))

    def family_of(self) -> dict[str, str]:
        return {r: fam for fam, recipes in self.families.items() for r in recipes}

    def select_families(self) -> dict[str, list[str]]:
        """Search families that compete: family -> recipes."""
        if self.select is None:
            return {}
        if isinstance(self.select.families, dict):
            return dict(self.select.families)
        return {f: list(self.families[f]) for f in self.select.families}

    def matched_control(self, dam_recipe: str) -> str | None:
        d = self.decompose.get(dam_recipe)
        return d.matched() if d else None

    def has_findings(self) -> bool:
        return bool(self.controls)


def parse(raw: dict | None, where: str = "analysis") -> Analysis:
    """The block's structure (keys and types); names are checked by :func:`check_names`."""
    return S.check(Analysis, raw or {}, where, ("analysis",))


def check_names(a: Analysis, *, recipes: set[str], protocols: set[str], where: str) -> None:
    """Every recipe the block names exists; the primary endpoint's protocol is one the suite runs."""

    def known(name: str, key: str) -> None:
        if name not in recipes:
            raise ConfigError(f"{where}: analysis.{key}: unknown recipe '{name}'{did_you_mean(name, sorted(recipes))}; "
                              f"declared recipes: {', '.join(sorted(recipes))}")

    for c in a.controls:
        known(c, "controls")
    seen: dict[str, str] = {}
    for fam, names in a.families.items():
        for r in names:
            known(r, f"families.{fam}")
            if r in seen and seen[r] != fam:
                raise ConfigError(f"{where}: analysis.families: '{r}' is in both '{seen[r]}' and '{fam}'; "
                                  f"a recipe belongs to one family")
            seen[r] = fam
    for dam, d in a.decompose.items():
        known(dam, "decompose")
        for step, r in d.chain():
            known(r, f"decompose.{dam}.{step}")
    for fam, r in a.arms.items():
        if fam not in a.families:
            raise ConfigError(f"{where}: analysis.arms: unknown family '{fam}'{did_you_mean(fam, list(a.families))}; "
                              f"families: {', '.join(a.families)}")
        known(r, f"arms.{fam}")
    for m in a.secondary_metrics:
        if m not in PAIRED_METRICS:
            raise ConfigError(f"{where}: analysis.secondary_metrics: unknown metric '{m}'{did_you_mean(m, PAIRED_METRICS)}; "
                              f"choose from {', '.join(PAIRED_METRICS)}")
    if a.select is not None and not isinstance(a.select.families, dict):
        for f in a.select.families:
            if f not in a.families:
                raise ConfigError(f"{where}: analysis.select.families: unknown family '{f}'"
                                  f"{did_you_mean(f, list(a.families))}; declare it in analysis.families")
    p = a.primary
    if p is not None:
        if p.control != "matched":
            known(p.control, "primary.control")
        elif not a.decompose:
            raise ConfigError(f"{where}: analysis.primary.control 'matched' needs analysis.decompose "
                              f"(each DAM recipe's matched controls)")
        if p.treatment != DAM:
            known(p.treatment, "primary.treatment")
        elif not a.dam:
            raise ConfigError(f"{where}: analysis.primary.treatment 'dam' needs analysis.families.dam")
        if p.protocol not in protocols:
            raise ConfigError(f"{where}: analysis.primary.protocol '{p.protocol}' is not run by this suite"
                              f"{did_you_mean(p.protocol, sorted(protocols))}; its protocols: {', '.join(sorted(protocols))}")
        if p.metric not in PAIRED_METRICS:
            raise ConfigError(f"{where}: analysis.primary.metric: unknown metric '{p.metric}'"
                              f"{did_you_mean(p.metric, PAIRED_METRICS)}")
    if a.power is not None:
        if not 0 < a.power.alpha < 1 or not 0 < a.power.power < 1:
            raise ConfigError(f"{where}: analysis.power: alpha and power must be in (0, 1)")
        if p is None:
            raise ConfigError(f"{where}: analysis.power needs analysis.primary (the endpoint whose power it states)")
