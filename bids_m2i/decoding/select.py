"""Best-of-N candidate selection (``--candidates N``).

A generator samples; one sample may match the decoded content better than another. As MindEye2 and MIRAGE
do, N candidates are generated per item, each from its own seed, and the one whose CLIP image embedding is
closest (cosine) to the *decoded* embedding is kept. Only decoded quantities are used, never the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .generate import item_seeds


def candidate_seeds(seed: int, n_items: int, n_candidates: int) -> np.ndarray:
    """Seeds ``(n_items, n_candidates)``: candidate 0 has the item's usual seed (so ``N = 1`` gives the same
    image as without best-of-N), candidate k > 0 a seed of its own from ``(seed, item, k)``."""
    first = item_seeds(seed, n_items)
    out = np.zeros((n_items, n_candidates), dtype=np.int64)
    for i in range(n_items):
        out[i, 0] = first[i]
        for k in range(1, n_candidates):
            out[i, k] = int(np.random.SeedSequence([int(seed), i, k]).generate_state(1, dtype=np.uint32)[0])
    return out


class ClipCosineSelector:
    """Keeps the candidate whose CLIP image embedding has the highest cosine with the decoded embedding.

    ``clip`` is a loaded image encoder with ``encode_images(list of PIL) -> (n, d)`` in the space the
    decoder predicts (the ``clip`` target's extractor).
    """

    name = "clip-cosine"

    def __init__(self, clip):
        self.clip = clip

    def scores(self, candidates: Sequence[Sequence], decoded: np.ndarray) -> np.ndarray:
        """Cosine similarity (n_items, n_candidates) of every candidate with its item's decoded embedding."""
        from ..evaluation.retrieval import similarity_matrix

        decoded = np.asarray(decoded, dtype=np.float32)
        out = np.zeros((len(candidates), len(candidates[0]) if candidates else 0))
        for i, images in enumerate(candidates):
            embeddings = self.clip.encode_images(list(images))
            out[i] = similarity_matrix(decoded[i:i + 1], embeddings, "cosine")[0]
        return out

    def select(self, candidates: Sequence[Sequence], decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of the best candidate per item, and all the similarities."""
        scores = self.scores(candidates, decoded)
        return scores.argmax(axis=1), scores


def save_candidates(folder, candidates: Sequence[Sequence], seeds: np.ndarray) -> list[list[str]]:
    """Write every candidate as ``item-<NNNN>_cand-<KK>_seed-<S>.png`` under ``folder``; return the paths."""
    from ..utils.atomic import save_png

    folder = Path(folder)
    paths = []
    for i, images in enumerate(candidates):
        row = []
        for k, image in enumerate(images):
            path = folder / f"item-{i:04d}_cand-{k:02d}_seed-{int(seeds[i, k])}.png"
            save_png(path, image)
            row.append(str(path))
        paths.append(row)
    return paths
