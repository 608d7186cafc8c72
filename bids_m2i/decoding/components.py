"""Named, swappable decoding components (the way diffusers composes a pipeline from parts).

A reconstruction is composed of: feature spaces (what the betas are decoded into), a decoder (betas ->
features, an object with ``fit(betas, features, labels)`` / ``predict(betas)`` / ``feature_mean`` /
``feature_sd`` / ``save``), a generator (decoded features -> images) and a candidate selector (best of N).
Each kind is a small registry of factories; another engine adds its own with ``register`` (e.g. a group
``shared`` decoder: ``DECODERS.register("shared", factory)``) and the participant run picks it by name.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UsageError


class Registry:
    """Name -> factory, with a clear error for an unknown name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, factory: Callable, description: str = "") -> None:
        self._factories[name] = factory
        self._descriptions[name] = description

    def names(self) -> list[str]:
        return list(self._factories)

    def describe(self, name: str) -> str:
        return self._descriptions.get(name, "")

    def create(self, name: str, **kwargs):
        if name not in self._factories:
            raise UsageError(f"unknown {self.kind} {name!r}", hint=f"use one of: {', '.join(self._factories)}")
        return self._factories[name](**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._factories


def _pixels(**kw):
    from .features import PixelExtractor

    return PixelExtractor(kw.get("size", 32))


def _clip(clip=None, **kw):
    return clip


def _clip_text(clip=None, **kw):
    from .text import ClipTextSpace

    return ClipTextSpace(clip)


def _tfidf(captions=(), **kw):
    from .text import TfidfTextSpace

    return TfidfTextSpace.fit(dict.fromkeys(captions))


def _decoder(method):
    def factory(**kw):
        from .decoder import BrainDecoder

        return BrainDecoder(method, **kw)

    return factory


def _clip_cosine(clip=None, **kw):
    from .select import ClipCosineSelector

    return ClipCosineSelector(clip)


FEATURE_SPACES = Registry("feature space")
FEATURE_SPACES.register("pixels", _pixels, "32 x 32 RGB pixel values (no weights)")
FEATURE_SPACES.register("clip", _clip, "open_clip image embedding (the loaded `clip` model)")
FEATURE_SPACES.register("clip-text", _clip_text, "open_clip text embedding of captions")
FEATURE_SPACES.register("text", _tfidf, "TF-IDF of captions, fitted on the training captions (no weights)")

DECODERS = Registry("decoder")
DECODERS.register("ridge", _decoder("ridge"), "ridge with one alpha per feature by CV")
DECODERS.register("mlp", _decoder("mlp"), "MindEye-style residual MLP")

GENERATORS = Registry("generator")
GENERATORS.register("pixels", lambda **kw: "pixels", "decoded pixels as the image")
GENERATORS.register("unclip", lambda **kw: "unclip", "Stable unCLIP from the decoded embedding (+ caption prompt, "
                    "low-level start)")

SELECTORS = Registry("candidate selector")
SELECTORS.register("clip-cosine", _clip_cosine, "the candidate whose CLIP embedding is closest to the decoded one")
