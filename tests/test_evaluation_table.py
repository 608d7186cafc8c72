"""The metrics table: known answers end to end on small images and features."""

import numpy as np
import pandas as pd
import pytest

from bids_m2i.evaluation.table import METRICS_TABLE_COLUMNS, evaluate_reconstructions, write_metrics_table


def _dataset(n_distinct=6, repeats=(0, 1), side=32, seed=0, d=24):
    rng = np.random.default_rng(seed)
    images = [rng.random((side, side, 3)) for _ in range(n_distinct)]
    features = rng.normal(size=(n_distinct, d))
    order = list(range(n_distinct)) + list(repeats)
    ids = [f"img-{i:03d}" for i in order]
    return ids, [images[i] for i in order], features[order], order


def _row(frame, metric, space):
    rows = frame[(frame.metric == metric) & (frame.feature_space == space)]
    assert len(rows) == 1, f"{metric}/{space}: {len(rows)} rows"
    return rows.iloc[0]


def test_perfect_reconstructions():
    ids, images, feats, _ = _dataset()
    frame = evaluate_reconstructions(images, images, {"clip": feats}, {"clip": feats}, ids, "perception", "image",
                                     n_perm=200, seed=0)
    assert list(frame.columns) == METRICS_TABLE_COLUMNS
    assert set(frame.metric) == {"pixcorr", "ssim", "twoway", "image_top1", "top5", "brain_top1"}
    assert (frame.condition == "perception").all() and (frame.cue == "image").all()
    assert _row(frame, "pixcorr", "pixels").value == pytest.approx(1.0, abs=1e-5)
    assert _row(frame, "ssim", "pixels").value == pytest.approx(1.0, abs=1e-6)
    twoway = _row(frame, "twoway", "pixels")
    assert twoway.value == 1.0 and twoway.chance == 0.5 and twoway.p_value == pytest.approx(1 / 201)
    # 8 items (two repeats) but 6 distinct candidates
    assert twoway.n_items == 8 and twoway.n_candidates == 6
    top1 = _row(frame, "image_top1", "clip")
    assert top1.value == 1.0 and top1.chance == pytest.approx(1 / 6) and top1.n_candidates == 6
    assert _row(frame, "top5", "clip").chance == pytest.approx(5 / 6)
    brain = _row(frame, "brain_top1", "clip")
    assert brain.value == 1.0 and brain.n_items == 6
    # chance for pixcorr/ssim is the null mean: below the perfect value
    assert _row(frame, "ssim", "pixels").chance < 0.5


def test_shuffled_reconstructions_are_at_chance():
    ids, images, feats, order = _dataset(n_distinct=20, repeats=(), seed=1)
    rng = np.random.default_rng(5)
    wrong = rng.normal(size=feats.shape)
    recon = [images[i] for i in np.roll(np.arange(20), 1)]  # every item shows another target
    frame = evaluate_reconstructions(recon, images, {"clip": wrong}, {"clip": feats}, ids, "perception", "image",
                                     n_perm=200, seed=0, ssim_max_pairs=60)
    assert "permutations (pair budget)" in _row(frame, "ssim", "pixels").note
    twoway = _row(frame, "twoway", "pixels")
    assert twoway.value < 0.6 and twoway.p_value > 0.05
    assert _row(frame, "image_top1", "clip").p_value > 0.05
    assert abs(_row(frame, "pixcorr", "pixels").value) < 0.1


def test_text_cue_without_target_images_has_only_feature_metrics():
    ids, _, feats, _ = _dataset(n_distinct=5, repeats=(0, 0, 3))
    frame = evaluate_reconstructions(None, None, {"clip": feats}, {"clip": feats}, ids, "imagery", "text",
                                     n_perm=50)
    assert set(frame.metric) == {"image_top1", "top5", "brain_top1", "twoway"}
    twoway = _row(frame, "twoway", "clip")
    assert "no target image" in twoway.note and twoway.value == 1.0
    assert _row(frame, "top5", "clip").chance == 1.0  # 5 candidates: top-5 is trivial, and says so
    assert "trivial" in _row(frame, "top5", "clip").note


def test_retrieval_draws_300_of_many_candidates():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(400, 16))
    ids = [f"s{i}" for i in range(400)]
    pred = feats + 0.8 * rng.normal(size=feats.shape)
    frame = evaluate_reconstructions(None, None, {"clip": pred}, {"clip": feats}, ids, "perception", "image",
                                     n_perm=100, seed=3)
    top1 = _row(frame, "image_top1", "clip")
    assert top1.n_candidates == 300 and top1.chance == pytest.approx(1 / 300)
    assert "30 draws" in top1.note
    assert 0.05 < top1.value < 1.0 and top1.p_value == pytest.approx(1 / 101)
    again = evaluate_reconstructions(None, None, {"clip": pred}, {"clip": feats}, ids, "perception", "image",
                                     n_perm=100, seed=3)
    pd.testing.assert_frame_equal(frame, again)


def test_feature_extractor_spaces_and_distances():
    ids, images, _, _ = _dataset(n_distinct=5, repeats=())

    def mean_colour(imgs):  # a deterministic toy "network": per-channel means and a gradient
        arr = np.stack([np.asarray(i, dtype=float) for i in imgs])
        return np.concatenate([arr.mean(axis=(1, 2)), arr[:, ::4, ::4, 0].reshape(len(imgs), -1)], axis=1)

    extractors = {"alexnet2": mean_colour, "effnet": mean_colour, "unknown": mean_colour}
    frame = evaluate_reconstructions(images, images, None, None, ids, "imagery", "image",
                                     feature_extractors=extractors, n_perm=100)
    assert _row(frame, "twoway", "alexnet2").value == 1.0
    dist = _row(frame, "effnet_dist", "effnet")
    assert dist.value == pytest.approx(0.0, abs=1e-12)
    assert dist.chance > 0.5 and dist.p_value == pytest.approx(1 / 101)  # lower is better
    assert "unknown" not in set(frame.feature_space)


def test_write_metrics_table(tmp_path):
    ids, images, feats, _ = _dataset(n_distinct=3, repeats=())
    a = evaluate_reconstructions(images, images, None, None, ids, "perception", "image", n_perm=0)
    assert a.p_value.isna().all()
    b = evaluate_reconstructions(None, None, {"clip": feats}, {"clip": feats}, ids, "imagery", "text", n_perm=10)
    path = tmp_path / "sub-01_desc-metrics_table.tsv"
    write_metrics_table([a, b], path)
    back = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    assert list(back.columns) == METRICS_TABLE_COLUMNS
    assert len(back) == len(a) + len(b)
    assert "n/a" in path.read_text()


def test_single_distinct_target_reports_nan_with_reason():
    frame = evaluate_reconstructions(None, None, {"clip": np.ones((2, 4))}, {"clip": np.ones((2, 4))}, ["x", "x"],
                                     "imagery", "text", n_perm=10)
    assert frame.value.isna().all() and frame.note.str.contains("at least 2").all()


def test_figures_are_written_and_deterministic(tmp_path):
    from bids_m2i.evaluation.figures import plot_metrics_vs_chance, plot_reconstruction_pairs

    ids, images, feats, _ = _dataset(n_distinct=4, repeats=())
    frame = evaluate_reconstructions(images, images, {"clip": feats}, {"clip": feats}, ids, "perception", "image",
                                     n_perm=20)
    a, b = plot_metrics_vs_chance(frame, tmp_path / "a.svg"), plot_metrics_vs_chance(frame, tmp_path / "b.svg")
    assert a.read_bytes() == b.read_bytes() and b"pixcorr" in a.read_bytes()
    pairs = plot_reconstruction_pairs(images, images, tmp_path / "pairs.svg", titles=ids)
    assert pairs.stat().st_size > 1000


def test_feature_rows_must_be_one_per_item():
    ids, _, feats, _ = _dataset(n_distinct=4, repeats=(0, 1))
    with pytest.raises(ValueError, match="one row per item"):
        evaluate_reconstructions(None, None, {"clip": feats}, {"clip": feats[:4]}, ids, "imagery", "text", n_perm=5)


def test_brain_correlation_row():
    from bids_m2i.evaluation.table import evaluate_reconstructions

    rng = np.random.default_rng(0)
    measured = rng.normal(size=(8, 50))
    ids = [f"s{i}" for i in range(8)]
    good = evaluate_reconstructions(None, None, None, None, ids, "imagery", "text", n_perm=200,
                                    brain_betas={"pixels": (measured + 0.1 * rng.normal(size=measured.shape), measured)})
    row = good[good.metric == "brain_corr"].iloc[0]
    # chance: mean over shuffled pairings (a random permutation keeps 1 of 8 pairs on average)
    assert row.value > 0.95 and row.p_value < 0.01 and abs(row.chance) < 0.2 and row.feature_space == "pixels"
    noise = evaluate_reconstructions(None, None, None, None, ids, "imagery", "text", n_perm=200,
                                     brain_betas={"pixels": (rng.normal(size=measured.shape), measured)})
    assert abs(noise[noise.metric == "brain_corr"].iloc[0].value) < 0.2


def test_conditions_side_by_side():
    from bids_m2i.evaluation.table import conditions_side_by_side

    frame = pd.DataFrame({
        "condition": ["perception", "imagery", "imagery", "imagery"], "cue": ["none", "image", "text", "text"],
        "metric": ["twoway", "twoway", "twoway", "image_top1"], "feature_space": ["pixels", "pixels", "pixels", "text"],
        "value": [0.9, 0.8, "n/a", 0.6], "chance": [0.5, 0.5, 0.5, 0.1]})
    wide = conditions_side_by_side(frame).set_index(["metric", "feature_space"])
    assert list(wide.columns[:3]) == ["perception", "imagery_memory", "imagery_text"]
    assert wide.loc[("twoway", "pixels"), "perception"] == 0.9
    assert wide.loc[("twoway", "pixels"), "imagery_memory"] == 0.8
    assert np.isnan(wide.loc[("twoway", "pixels"), "imagery_text"])  # n/a stays empty
    assert wide.loc[("image_top1", "text"), "imagery_text"] == 0.6
    assert wide.loc[("image_top1", "text"), "imagery_text_chance"] == 0.1
