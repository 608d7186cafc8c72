"""The core of benchmarks/text_prior.py: the imagery weight comes from memory items only, a text route that says
nothing about the item gets w ~ 0, and cross-fitted weights never look at the item they are used for."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import text_prior  # noqa: E402

from bids_m2i.decoding.text import TfidfTextSpace  # noqa: E402

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.9, 0.1),
           "black": (0.05, 0.05, 0.05), "white": (0.95, 0.95, 0.95)}
PLACES = {"top left": (0, 0), "top right": (0, 4), "bottom left": (4, 0), "bottom right": (4, 4)}


def _scene(rng):
    bg, obj = rng.choice(list(COLOURS), 2, replace=False)
    place = rng.choice(list(PLACES))
    image = np.ones((8, 8, 3)) * COLOURS[bg]
    r, c = PLACES[place]
    image[r:r + 4, c:c + 4] = COLOURS[obj]
    return f"a {obj} square at the {place} on a {bg} background", image.ravel()


def _run(seed=0, brain_noise=3.0, n_train=150, n_memory=20, n_text=10):
    rng = np.random.default_rng(seed)
    train = [_scene(rng) for _ in range(n_train)]
    memory = [_scene(rng) for _ in range(n_memory)]
    imagination = [_scene(rng) for _ in range(n_text)]
    items = memory + imagination
    targets = np.stack([p for _, p in items])
    # a weak brain route (imagery SNR): the target plus much noise
    brain = targets + brain_noise * targets.std() * rng.standard_normal(targets.shape)
    condition = np.array(["imagery_memory"] * n_memory + ["imagery_text"] * n_text)
    return {"space": TfidfTextSpace.fit(dict.fromkeys(t for t, _ in train)),
            "train_captions": [t for t, _ in train], "train_pixels": np.stack([p for _, p in train]),
            "brain": brain, "targets": targets, "text_route": [t for t, _ in items], "condition": condition,
            "stimulus": np.array([f"s{i}" for i in range(len(items))])}


def test_informative_text_gets_weight_and_helps_imagination():
    run = _run()
    result = text_prior.evaluate(run)
    assert result["w_imagery"] >= 0.1
    text = result["imagery_text"]
    assert text["with"]["pixcorr"] > text["without"]["pixcorr"] + 0.05
    assert text["with"]["twoway"] >= text["without"]["twoway"]


def test_shuffled_memory_captions_give_no_weight():
    run = _run()
    assert text_prior.evaluate(run, shuffle_memory_captions=True)["w_imagery"] <= 0.1


def test_weight_for_imagination_is_chosen_on_memory_items_only():
    run = _run()
    before = text_prior.evaluate(run)["w_imagery"]
    # imagination targets replaced by noise: the weight cannot move, since it never sees them
    changed = dict(run, targets=run["targets"].copy())
    text_rows = run["condition"] == "imagery_text"
    changed["targets"][text_rows] = np.random.default_rng(5).random(changed["targets"][text_rows].shape)
    assert text_prior.evaluate(changed)["w_imagery"] == before
    # while spoiling the memory items' text route does move it
    spoiled = dict(run, text_route=list(run["text_route"]))
    for i in np.flatnonzero(run["condition"] == "imagery_memory"):
        spoiled["text_route"][i] = "a white square at the top left on a black background"
    assert text_prior.evaluate(spoiled)["w_imagery"] < before


def test_cross_fitted_weight_ignores_the_item_itself():
    run = _run()
    memory = run["condition"] == "imagery_memory"
    prior = text_prior.TextPrior(run["space"], run["train_captions"], run["train_pixels"]).predict(
        run["text_route"])
    brain, prior, targets = run["brain"][memory], prior[memory], run["targets"][memory]
    groups = run["stimulus"][memory]
    weights = text_prior.cross_fitted_weights(brain, prior, targets, groups)
    spoiled = targets.copy()
    spoiled[0] = -targets[0]  # only item 0's own target changes
    again = text_prior.cross_fitted_weights(brain, prior, spoiled, groups)
    assert again[0] == weights[0]


def test_mix_endpoints():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 12)), rng.random((3, 12))
    np.testing.assert_allclose(text_prior.mix(a, b, 0.0), text_prior._zscore(a))
    np.testing.assert_allclose(text_prior.mix(a, b, 1.0), text_prior._zscore(b))
    with pytest.raises(ValueError):
        text_prior.mix(a, b, [0.1, 0.2])
