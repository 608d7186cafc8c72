"""Evaluation engine: metrics as MindEye / Brain-Diffuser compute them, with chance and p-values.

- :mod:`.retrieval` — rank and top-k among *distinct* candidates (numpy only; used by decoding).
- :mod:`.metrics` — pixcorr, SSIM, two-way identification, correlation distance (pair functions).
- :mod:`.feature_spaces` — AlexNet/Inception/EfficientNet/SwAV/CLIP features from the models folder.
- :mod:`.stats` — chance levels and permutation p-values.
- :mod:`.table` — :func:`~.table.evaluate_reconstructions`, the long metrics table and its writer.

See ``docs/evaluation.md`` for the definitions and references.
"""

from .retrieval import distinct_targets, rank_candidates, similarity_matrix, topk_hits

__all__ = ["distinct_targets", "rank_candidates", "similarity_matrix", "topk_hits"]
