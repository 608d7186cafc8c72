"""Image and feature metrics against known answers and against scikit-image / numpy references."""

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from bids_m2i.evaluation.metrics import (
    all_pairs,
    correlation_distance_pairs,
    images_to_tensor,
    pixcorr_pairs,
    ssim_pairs,
    twoway_from_similarity,
    twoway_matrix,
    twoway_scores,
)

torch.set_num_threads(1)


def _images(n, side=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((side, side, 3)) for _ in range(n)]


def test_images_to_tensor_accepts_pil_uint8_float_gray_and_resizes():
    from PIL import Image

    rgb = (np.arange(30 * 20 * 3) % 256).astype(np.uint8).reshape(30, 20, 3)
    batch = images_to_tensor([Image.fromarray(rgb), rgb, rgb / 255.0, rgb[..., 0]], size=25)
    assert batch.shape == (4, 3, 25, 25)
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    torch.testing.assert_close(batch[0], batch[1])
    torch.testing.assert_close(batch[1], batch[2], atol=1e-6, rtol=0)
    assert torch.equal(batch[3][0], batch[3][1])  # gray replicated to RGB
    native = images_to_tensor([rgb], size=None)
    assert native.shape == (1, 3, 30, 20)


def test_ssim_matches_scikit_image_gaussian_sigma_1_5():
    a = _images(3, seed=1)
    b = [np.clip(x + 0.3 * y - 0.1, 0, 1) for x, y in zip(a, _images(3, seed=2))]
    ta, tb = images_to_tensor(a, size=None), images_to_tensor(b, size=None)
    items, targets = all_pairs(3, 3)
    ours = ssim_pairs(ta, tb, items, targets)
    reference = [
        structural_similarity(
            rgb2gray(ta[i].permute(1, 2, 0).double().numpy()), rgb2gray(tb[t].permute(1, 2, 0).double().numpy()),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        )
        for i, t in zip(items, targets)
    ]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert len(set(np.round(reference, 4))) > 3  # the pairs really differ


def test_pixcorr_matches_numpy_corrcoef():
    a, b = _images(3, seed=3), _images(4, seed=4)
    ta, tb = images_to_tensor(a, size=None), images_to_tensor(b, size=None)
    items, targets = all_pairs(3, 4)
    ours = pixcorr_pairs(ta, tb, items, targets)
    reference = [np.corrcoef(ta[i].numpy().ravel(), tb[t].numpy().ravel())[0, 1] for i, t in zip(items, targets)]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_identical_images_give_pixcorr_and_ssim_one():
    imgs = images_to_tensor(_images(3, seed=5))  # default 425 px, as the papers
    assert imgs.shape[-1] == 425
    np.testing.assert_allclose(pixcorr_pairs(imgs, imgs, [0, 1, 2], [0, 1, 2]), 1.0, atol=1e-5)
    np.testing.assert_allclose(ssim_pairs(imgs, imgs, [0, 1, 2], [0, 1, 2]), 1.0, atol=1e-6)
    # different random images: near zero correlation and low SSIM
    assert abs(pixcorr_pairs(imgs, imgs, [0], [1])[0]) < 0.05
    assert ssim_pairs(imgs, imgs, [0], [1])[0] < 0.5


def test_constant_image_pixcorr_is_zero_not_nan():
    imgs = images_to_tensor([np.full((20, 20, 3), 0.5), np.random.default_rng(0).random((20, 20, 3))], size=None)
    assert pixcorr_pairs(imgs, imgs, [0], [1])[0] == 0.0


def test_twoway_known_answers():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(20, 50))
    assert twoway_scores(feats, feats, np.arange(20)).mean() == 1.0
    # unrelated predictions: about 50 %
    shuffled = rng.normal(size=(400, 50))
    targets = rng.normal(size=(40, 50))
    score = twoway_scores(shuffled, targets, rng.integers(0, 40, 400)).mean()
    assert abs(score - 0.5) < 0.04
    # a hand-made case: similarities to 3 candidates, true = 1 beats 0 but loses to 2 -> 1/2
    sim = np.array([[0.1, 0.5, 0.9]])
    np.testing.assert_allclose(twoway_from_similarity(sim)[0], [0.0, 0.5, 1.0])
    # ties count half: a constant prediction is exactly at chance
    np.testing.assert_allclose(twoway_from_similarity(np.zeros((1, 5))), 0.5)


def test_twoway_against_distinct_targets_only():
    # 3 stimuli, each shown twice; predictions are exact: repeats must not count as "other targets"
    rng = np.random.default_rng(7)
    base = rng.normal(size=(3, 10))
    matrix = twoway_matrix(base[[0, 1, 2, 0, 1, 2]], base)
    assert matrix.shape == (6, 3)
    np.testing.assert_allclose(matrix[np.arange(6), [0, 1, 2, 0, 1, 2]], 1.0)


def test_correlation_distance():
    from scipy.spatial.distance import correlation

    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(2, 7))
    ours = correlation_distance_pairs(a, b, [0, 1, 2], [1, 0, 1])
    np.testing.assert_allclose(ours, [correlation(a[0], b[1]), correlation(a[1], b[0]), correlation(a[2], b[1])])
    np.testing.assert_allclose(correlation_distance_pairs(a, a, [0, 1], [0, 1]), 0.0, atol=1e-12)


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError):
        pixcorr_pairs(torch.zeros(1, 3, 20, 20), torch.zeros(1, 3, 30, 30), [0], [0])


def test_twoway_shuffled_predictions_score_exactly_half_on_average():
    # NSD-Imagery's point: a public implementation subtracts one from the count of wins (chance ~0.41, max < 1).
    # Ours: averaged over every possible true target, any item's score is exactly 0.5, ties or not
    rng = np.random.default_rng(3)
    similarity = rng.normal(size=(7, 9))
    similarity[0, :4] = 0.25  # ties
    scores = twoway_from_similarity(similarity)
    np.testing.assert_allclose(scores.mean(axis=1), 0.5, atol=1e-12)
    # and shuffled pairings of real predictions average 0.5 (Monte Carlo over 2000 shuffles)
    feats = rng.normal(size=(12, 30))
    preds = feats + rng.normal(size=feats.shape)
    shuffled = [twoway_scores(preds, feats, rng.permutation(12)).mean() for _ in range(2000)]
    assert abs(np.mean(shuffled) - 0.5) < 0.01
    assert twoway_scores(feats, feats, np.arange(12)).mean() == 1.0  # a perfect decoder reaches 1, not (m-2)/(m-1)
