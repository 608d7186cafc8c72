"""Single-trial GLM engine (no nipype, no BIDS): see ``docs/glm.md``.

Entry point: :func:`estimate_single_trial_betas` on :class:`RunData` arrays and a trials table.
"""

from .design import RunData
from .estimate import METHOD_LABELS, METHODS, GLMResult, estimate_single_trial_betas
from .reliability import ncsnr, noise_ceiling, retest_reliability

__all__ = ["RunData", "GLMResult", "estimate_single_trial_betas", "METHODS", "METHOD_LABELS", "ncsnr",
           "noise_ceiling", "retest_reliability"]
