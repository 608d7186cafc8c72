"""reconstruct_participant on synthetic betas: imagery betas are put on the perception scale before decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant, standardise_like


def test_standardise_like_gives_each_voxel_the_reference_mean_and_sd():
    rng = np.random.default_rng(0)
    betas = rng.normal(5.0, 3.0, size=(50, 4)).astype(np.float32)
    betas[:, 3] = 2.0  # a constant voxel only gets the reference mean
    reference = rng.normal([0, 1, 2, 3], [1, 2, 3, 4], size=(80, 4)).astype(np.float32)
    out = standardise_like(betas, reference)
    np.testing.assert_allclose(out.mean(0), reference.mean(0), atol=1e-4)
    np.testing.assert_allclose(out[:, :3].std(0), reference[:, :3].std(0), rtol=1e-4)
    np.testing.assert_allclose(out[:, 3], reference[:, 3].mean(), rtol=1e-5)
    # ranks of the trials within a voxel are kept
    assert (np.argsort(out[:, 0]) == np.argsort(betas[:, 0])).all()
    np.testing.assert_array_equal(standardise_like(betas[:1], reference), betas[:1])


def _dataset(tmp_path, seed=0):
    """40 images; 30 seen twice (training), 10 seen three times (test) and imagined twice from memory.

    Voxels respond linearly to the images' pixels. In imagery every voxel has its own gain and offset, and
    noise of its own (as when a task changes the size, the baseline and the variance of responses voxel by
    voxel)."""
    rng = np.random.default_rng(seed)
    stim_dir = tmp_path / "stimuli"
    stim_dir.mkdir()
    codes = rng.random((40, 4, 4, 3))
    for i, code in enumerate(codes):
        Image.fromarray((code * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(stim_dir / f"im{i:02d}.png")
    n_vox = 300
    mixing = rng.standard_normal((48, n_vox))
    rows, betas = [], []

    def add(stim, condition, cue, gain=None, offset=None):
        signal = (codes[stim].ravel() - 0.5) @ mixing
        if gain is not None:
            signal = gain * signal + offset
        betas.append(signal + rng.standard_normal(n_vox) * 1.5)
        rows.append({"condition": condition, "cue": cue, "stimulus": f"im{stim:02d}", "stim_file": f"im{stim:02d}.png",
                     "cue_text": "n/a", "category": "n/a"})

    for repeat in range(3):
        for stim in range(40):
            if stim < 30 and repeat == 2:
                continue
            add(stim, "perception", "none")
    # imagery: weaker responses with a baseline of their own, and voxels whose imagery variance is mostly
    # not about the image (sd 0.5-50 on top of the shared noise)
    gain = np.exp(rng.uniform(np.log(0.2), np.log(1.0), n_vox))
    offset = rng.normal(0.0, 10.0, n_vox)
    extra_noise = np.exp(rng.uniform(np.log(0.5), np.log(50.0), n_vox))
    for _ in range(2):
        for stim in range(30, 40):
            add(stim, "imagery", "image", gain, offset)
            betas[-1] += rng.standard_normal(n_vox) * extra_noise
    return np.asarray(betas, dtype=np.float32), pd.DataFrame(rows), stim_dir


def _twoway(result, condition):
    metrics = result.metrics
    row = metrics[(metrics.condition == condition) & (metrics.metric == "twoway")]
    return float(row["value"].iloc[0])


def test_imagery_betas_standardised_before_decoding(tmp_path):
    betas, trials, stim_dir = _dataset(tmp_path)
    options = dict(work_dir=tmp_path / "work")
    on = reconstruct_participant(betas, trials, stim_dir, DecodingOptions(**options))
    off = reconstruct_participant(betas, trials, stim_dir, DecodingOptions(standardise_imagery=False, **options))
    assert "standardised" in on.split_summary["imagery_betas"]
    assert off.split_summary["imagery_betas"] == "as estimated"
    # perception is untouched by the option; imagery is decoded far better on the perception scale
    assert _twoway(on, "perception") == _twoway(off, "perception") > 0.9
    assert _twoway(on, "imagery") > 0.8
    assert _twoway(on, "imagery") > _twoway(off, "imagery") + 0.1


def test_held_out_perception_items_use_the_perception_map_and_imagery_the_error_map(tmp_path):
    from bids_m2i.decoding.reconstruct import fit_decoders, predict_items, prepare_features

    betas, trials, stim_dir = _dataset(tmp_path)
    options = DecodingOptions(targets=("pixels",), work_dir=tmp_path / "work")
    prepared = prepare_features(trials, stim_dir, options)
    fitted = fit_decoders(betas, prepared, options)
    decoder = fitted.decoders["pixels"]
    assert decoder.penalty == "joint"
    # a perception map that predicts a constant: every perception item gets the same image, while imagery items
    # still vary
    decoder.perception_coef = np.zeros_like(decoder.coef)
    decoder.perception_intercept = decoder.intercept.copy()
    decoder.perception_alpha = decoder.alpha
    predicted = predict_items(betas, prepared, fitted, options)
    table, pixels = predicted.table, predicted.features["pixels"]
    perception = (table["condition"] == "perception").to_numpy()
    assert perception.any() and (~perception).any()
    np.testing.assert_allclose(pixels[perception], np.broadcast_to(pixels[perception][0], pixels[perception].shape),
                               atol=1e-5)
    assert pixels[~perception].std(0).mean() > 0.01
