"""Number formatting shared by every table (one place, so all tables read alike)."""
from __future__ import annotations

import numpy as np


def fmt(mean: float, std: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "n/a"
    s = f"{mean:.{digits}f}"
    return f"{s} ± {std:.{digits}f}" if np.isfinite(std) else f"{s} ± n/a"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def signed(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:+.3f}"


def table(head: list[str], rows: list[list[str]], left: int) -> str:
    """Markdown table: the first ``left`` columns left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
