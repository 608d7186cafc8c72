"""How the pages print a number: one formatter for the participant and side-by-side tables."""

from __future__ import annotations

import numpy as np


def format_number(value, digits: int = 3) -> str:
    """``digits`` decimals; significant digits below 1e-3 (a chance level of 0.00067 is not 0.001); ``n/a`` for
    missing or non-finite values; other text as given."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a" if value in (None, "") else str(value)
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def format_p_value(value) -> str:
    """A permutation p-value: ``""`` when there is none (no permutations), ``"< 0.001"`` below 0.001 (1000
    permutations give p >= 1/1001, better read so than as 0.000999), else :func:`format_number`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(value):
        return ""
    return "< 0.001" if value < 1e-3 else format_number(value)
