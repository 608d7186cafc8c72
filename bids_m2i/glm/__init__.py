"""Single-trial GLM engine (no nipype, no BIDS): see ``docs/glm.md``.

Entry point: :func:`estimate_single_trial_betas` on :class:`RunData` arrays and a trials table.

The names below are imported on first use (PEP 562): importing one of the numpy-only modules (``design``,
``hrf_library``) does not import torch through this package's ``__init__``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"RunData": ".design", "GLMResult": ".estimate", "estimate_single_trial_betas": ".estimate",
            "METHODS": ".estimate", "METHOD_LABELS": ".estimate", "ncsnr": ".reliability",
            "noise_ceiling": ".reliability", "retest_reliability": ".reliability"}

__all__ = ["RunData", "GLMResult", "estimate_single_trial_betas", "METHODS", "METHOD_LABELS", "ncsnr",
           "noise_ceiling", "retest_reliability"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
