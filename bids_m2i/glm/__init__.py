"""Single-trial GLM engine (no nipype, no BIDS): see ``docs/glm.md``.

Entry point: :func:`estimate_single_trial_betas` on :class:`RunData` arrays and a trials table.

The names below are imported on first use (PEP 562): importing one of the numpy-only modules (``design``,
``hrf_library``) does not import torch through this package's ``__init__``.
"""

from __future__ import annotations

_DESIGN = {"RunData"}
_ESTIMATE = {"GLMResult", "estimate_single_trial_betas", "METHODS", "METHOD_LABELS"}
_RELIABILITY = {"ncsnr", "noise_ceiling", "retest_reliability"}

__all__ = ["RunData", "GLMResult", "estimate_single_trial_betas", "METHODS", "METHOD_LABELS", "ncsnr",
           "noise_ceiling", "retest_reliability"]


def __getattr__(name: str):
    # fixed imports only (no module named at run time: tests/test_reliability_security.py scans for those)
    if name in _DESIGN:
        from . import design as module
    elif name in _ESTIMATE:
        from . import estimate as module
    elif name in _RELIABILITY:
        from . import reliability as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
