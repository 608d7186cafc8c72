"""Image and feature metrics computed as MindEye / Brain-Diffuser compute them.

Every metric is written as a *pair function*: it scores reconstruction ``i`` against target ``c`` for any
list of pairs ``(i, c)``. The observed value uses the true pairs; the permutation null (``stats.py``) reuses
the same code on shuffled pairs, so observed and null numbers come from one implementation.

- :func:`pixcorr_pairs`: Pearson correlation over all pixels of the RGB images resized to 425 x 425
  (bilinear), per image (Ozcelik & VanRullen 2023; Scotti et al. 2023).
- :func:`ssim_pairs`: SSIM (Wang et al. 2004) of the grayscale images (scikit-image ``rgb2gray``
  weights) at 425 x 425, Gaussian weights sigma = 1.5 (truncated at 3.5 sigma, 11 taps), population
  covariance, data range 1, K1 = 0.01, K2 = 0.03, border of the filter radius excluded from the mean:
  numerically the same as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0)`` (checked in the tests), but vectorised in torch so that
  thousands of pairs for the null are affordable.
- :func:`twoway_scores`: two-way identification in a feature space against every *distinct* other target.
- :func:`correlation_distance_pairs`: 1 - Pearson r between feature vectors (``effnet_dist``,
  ``swav_dist``; ``scipy.spatial.distance.correlation``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .retrieval import as_numpy

__all__ = [
    "EVAL_IMAGE_SIZE",
    "images_to_tensor",
    "resize_images",
    "rgb_to_gray",
    "pixcorr_pairs",
    "ssim_pairs",
    "twoway_from_similarity",
    "twoway_matrix",
    "twoway_scores",
    "correlation_distance_pairs",
    "all_pairs",
]

#: Side of the square images on which MindEye/Brain-Diffuser compute pixcorr and SSIM (NSD stimuli are 425 px).
EVAL_IMAGE_SIZE = 425
#: scikit-image ``rgb2gray`` luminance weights (ITU-R BT.709).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _one_image_to_chw(image) -> torch.Tensor:
    """One image (PIL, HxWx3/HxW array, 3xHxW tensor) as a float32 tensor (3, H, W) in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and tensor.shape[-1] not in (1, 3):
            tensor = tensor.float()
            if image.dtype == torch.uint8:
                tensor = tensor / 255.0
            return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor
        image = tensor.numpy()
    array = np.asarray(image)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    array = array.astype(np.float32) / scale
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (3, H, W), got {array.shape}")
    if array.shape[2] == 4:  # RGBA: drop alpha as PIL's convert("RGB") does
        array = array[..., :3]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def resize_images(batch: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize a batch (n, 3, H, W) to ``size`` (int = square) with antialiasing (torchvision's default)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    if isinstance(size, int):
        size = (size, size)
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    return resize(batch, list(size), interpolation=mode, antialias=True)


def images_to_tensor(images: Sequence, size: int | None = EVAL_IMAGE_SIZE, interpolation: str = "bilinear") -> torch.Tensor:
    """Stack images of any size into a float32 batch (n, 3, size, size) with values in [0, 1].

    Parameters
    ----------
    images : sequence of PIL.Image, numpy arrays (H, W[, 3]) (uint8 0-255 or float 0-1) or tensors (3, H, W)
        A tensor of shape (n, 3, H, W) is accepted as is.
    size : int or None
        Square side to resize to (bilinear, antialiased); None keeps the size (all images must match).
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        batch = images.detach().cpu().float()
        if images.dtype == torch.uint8:
            batch = batch / 255.0
        return resize_images(batch, size, interpolation) if size else batch
    tensors = [_one_image_to_chw(image) for image in images]
    if size:
        tensors = [resize_images(t[None], size, interpolation)[0] for t in tensors]
    if not tensors:
        side = size or 1
        return torch.zeros((0, 3, side, side))
    return torch.stack(tensors).clamp_(0.0, 1.0)


def rgb_to_gray(batch: torch.Tensor) -> torch.Tensor:
    """Luminance (n, H, W) of an RGB batch (n, 3, H, W) with scikit-image's ``rgb2gray`` weights."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=batch.dtype, device=batch.device)
    return torch.einsum("nchw,c->nhw", batch, weights)


def all_pairs(n_items: int, n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (item, target) pair as two index arrays of length n_items * n_targets."""
    items, targets = np.meshgrid(np.arange(n_items), np.arange(n_targets), indexing="ij")
    return items.ravel(), targets.ravel()


def _standardised_rows(batch: torch.Tensor) -> torch.Tensor:
    """Rows (flattened images) centred and scaled to unit norm in float64; constant rows become 0."""
    flat = batch.reshape(batch.shape[0], -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, flat / norm.clamp_min(1e-300), 0.0)


def pixcorr_pairs(recon: torch.Tensor, targets: torch.Tensor, item_index, target_index, block: int = 32) -> np.ndarray:
    """Pixel correlation of reconstruction ``item_index[p]`` with target ``target_index[p]``.

    Parameters
    ----------
    recon : tensor (n, 3, S, S)
        Reconstructions in [0, 1] already resized (see :func:`images_to_tensor`).
    targets : tensor (m, 3, S, S)
        Target images, same size.
    item_index, target_index : int arrays, shape (p,)
    block : int
        Images standardised at once (float64 memory: block * 3 * S * S * 8 bytes, twice).

    Returns
    -------
    numpy.ndarray, shape (p,)
        Pearson r over all pixels and channels, as ``np.corrcoef`` of the flattened images (0 for a
        constant image).
    """
    if recon.shape[1:] != targets.shape[1:]:
        raise ValueError(f"reconstructions {tuple(recon.shape[1:])} and targets {tuple(targets.shape[1:])} differ in size")
    items = np.asarray(item_index, dtype=np.int64)
    tgts = np.asarray(target_index, dtype=np.int64)
    used_items, item_pos = np.unique(items, return_inverse=True)
    used_tgts, tgt_pos = np.unique(tgts, return_inverse=True)
    # Block-wise float64 matrix products over the images involved (BLAS), then pick the pairs
    gram = np.empty((used_items.size, used_tgts.size))
    for r0 in range(0, used_items.size, block):
        z_recon = _standardised_rows(recon[used_items[r0 : r0 + block]])
        for t0 in range(0, used_tgts.size, block):
            z_target = _standardised_rows(targets[used_tgts[t0 : t0 + block]])
            gram[r0 : r0 + block, t0 : t0 + block] = (z_recon @ z_target.T).numpy()
    return gram[item_pos, tgt_pos].clip(-1.0, 1.0)


def _gaussian_kernel_1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    # Same taps as scipy.ndimage.gaussian_filter: radius int(truncate * sigma + 0.5), weights normalised
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_valid(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter keeping only the 'valid' part (n, H-2r, W-2r).

    skimage filters with reflected borders and then crops the filter radius before averaging, so the
    border handling never reaches the values that count: a valid convolution gives the same numbers.
    """
    # Shifted weighted sums accumulated in place (11 taps): exact, and several times faster on CPU than
    # conv2d or out-of-place sums, which are bound by memory traffic
    weights = kernel.tolist()
    taps = len(weights)
    height, width = images.shape[-2:]
    rows = images[..., 0 : height - taps + 1, :] * weights[0]
    for k in range(1, taps):
        rows.add_(images[..., k : height - taps + 1 + k, :], alpha=weights[k])
    out = rows[..., 0 : width - taps + 1] * weights[0]
    for k in range(1, taps):
        out.add_(rows[..., k : width - taps + 1 + k], alpha=weights[k])
    return out


def ssim_pairs(
    recon: torch.Tensor,
    targets: torch.Tensor,
    item_index,
    target_index,
    chunk: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Mean SSIM of grayscale reconstruction ``item_index[p]`` against target ``target_index[p]``.

    Parameters
    ----------
    recon : tensor (n, 3, S, S)
        RGB reconstructions in [0, 1], resized (see :func:`images_to_tensor`).
    targets : tensor (m, 3, S, S)
    item_index, target_index : int arrays, shape (p,)
    chunk : int
        Pairs filtered at once (memory: chunk * S * S * 8 bytes a few times).
    device : torch device for the filtering.
    dtype : torch dtype of the filtering; float32 (default) agrees with scikit-image's float64 result to
        ~1e-6 at a third of the time.

    Returns
    -------
    numpy.ndarray, shape (p,)
    """
    if recon.shape[1:] != targets.shape[1:]:
        raise ValueError(f"reconstructions {tuple(recon.shape[1:])} and targets {tuple(targets.shape[1:])} differ in size")
    kernel = _gaussian_kernel_1d().to(device=device, dtype=dtype)
    radius = (kernel.shape[0] - 1) // 2
    if min(recon.shape[-2:]) <= 2 * radius:
        raise ValueError(f"images of {tuple(recon.shape[-2:])} px are too small for an SSIM window of {2 * radius + 1} px")
    c1 = (SSIM_K1 * 1.0) ** 2
    c2 = (SSIM_K2 * 1.0) ** 2

    def local_stats(batch):
        gray = rgb_to_gray(batch.to(device=device, dtype=torch.float64)).to(dtype)
        mean = _gaussian_valid(gray, kernel)
        mean_sq = mean * mean
        var = _gaussian_valid(gray * gray, kernel).sub_(mean_sq)
        return gray, mean, mean_sq, var

    # Per-image statistics once; only the cross term needs each pair. In-place arithmetic below keeps
    # the memory traffic (the CPU bottleneck) low.
    gray_r, mean_r, mean_sq_r, var_r = local_stats(recon)
    gray_t, mean_t, mean_sq_t, var_t = local_stats(targets)
    items = torch.as_tensor(np.asarray(item_index), dtype=torch.long, device=device)
    tgts = torch.as_tensor(np.asarray(target_index), dtype=torch.long, device=device)
    out = torch.empty(items.shape[0], dtype=torch.float64)
    for start in range(0, items.shape[0], chunk):
        i, t = items[start : start + chunk], tgts[start : start + chunk]
        mean_xy = mean_r[i].mul_(mean_t[t])
        contrast = _gaussian_valid(gray_r[i].mul_(gray_t[t]), kernel).sub_(mean_xy).mul_(2).add_(c2)  # 2 cov + C2
        numerator = mean_xy.mul_(2).add_(c1).mul_(contrast)  # (2 mx my + C1)(2 cov + C2)
        denominator = mean_sq_r[i].add_(mean_sq_t[t]).add_(c1).mul_(var_r[i].add_(var_t[t]).add_(c2))
        out[start : start + chunk] = numerator.div_(denominator).double().mean(dim=(1, 2)).cpu()
    return out.numpy()


def twoway_from_similarity(similarity) -> np.ndarray:
    """Two-way identification scores from a (prediction x distinct target) similarity matrix.

    Parameters
    ----------
    similarity : array (n, m)
        Entry (i, c): similarity of prediction i with distinct target c (higher = more alike).

    Returns
    -------
    numpy.ndarray, shape (n, m)
        Entry (i, c): fraction of the other m - 1 targets j with similarity[i, c] > similarity[i, j],
        exact ties counting one half (so a constant prediction scores chance, 0.5). With c the true target
        of item i this is item i's two-way identification accuracy. NaN when m < 2.
    """
    from scipy.stats import rankdata

    similarity = as_numpy(similarity)
    m = similarity.shape[1]
    if m < 2:
        return np.full(similarity.shape, np.nan)
    # average rank - 1 = (# strictly smaller) + 0.5 * (# other ties)
    return (rankdata(similarity, axis=1, method="average") - 1.0) / (m - 1)


def twoway_matrix(pred_features, target_features, metric: str = "pearson") -> np.ndarray:
    """Two-way identification scores (n, m) of feature rows (see :func:`twoway_from_similarity`).

    Parameters
    ----------
    pred_features : array (n, d)
        Features of the reconstructions (or decoded feature vectors).
    target_features : array (m, d)
        Features of the *distinct* targets.
    metric : {"pearson", "cosine"}
        Pearson (``np.corrcoef``) as MindEye and Brain-Diffuser.
    """
    from .retrieval import similarity_matrix

    return twoway_from_similarity(similarity_matrix(pred_features, target_features, metric))


def twoway_scores(pred_features, target_features, true_index, metric: str = "pearson") -> np.ndarray:
    """Two-way identification accuracy of each prediction against its distinct other targets, shape (n,)."""
    matrix = twoway_matrix(pred_features, target_features, metric)
    return matrix[np.arange(matrix.shape[0]), np.asarray(true_index, dtype=np.int64)]


def correlation_distance_pairs(pred_features, target_features, item_index, target_index) -> np.ndarray:
    """1 - Pearson r between feature rows (scipy's correlation distance), shape (p,). Lower is better."""
    from .retrieval import _unit_rows

    zp = _unit_rows(as_numpy(pred_features), "pearson")
    zt = _unit_rows(as_numpy(target_features), "pearson")
    items = np.asarray(item_index, dtype=np.int64)
    tgts = np.asarray(target_index, dtype=np.int64)
    return 1.0 - np.einsum("pd,pd->p", zp[items], zt[tgts])
