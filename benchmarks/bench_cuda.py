"""The GPU checks: unCLIP with full-size architectures at 768 px, and the numeric engines on CUDA.

Run on a machine with a CUDA GPU (issue 14 asks for s/image and peak GPU memory of best-of-N for N = 1, 4,
16; the engines have CUDA paths that CI, which has no GPU, never runs)::

    python benchmarks/bench_cuda.py --out results/ [--sections unclip glm ridge motion]

Sections (each writes ``<out>/<section>.json`` as soon as it is done, so a run cut short keeps what it
measured):

``unclip``
    Stable unCLIP-H with the **architectures** of ``stabilityai/stable-diffusion-2-1-unclip`` (UNet, VAE,
    OpenCLIP-H text encoder, ViT-H/14 image encoder: the sizes of that repository's ``config.json`` files,
    listed in :data:`FULL_SIZE`) and **random weights** (none can be downloaded there), fp16 as the app runs
    it on a GPU (``models.loading.default_dtype``), the best-of-N selector on a random open_clip ViT-H-14.
    For N = 1, 4, 16 candidates of one item, through the app's own code (``decoding.generate`` and
    ``decoding.select``): the default path (low-level start, strength 0.75, image + text guidance, 20 steps)
    and, for reference, the from-noise path (image guidance only). Seconds per image include generation,
    the VAE decode and the CLIP scoring of the candidates; peak GPU memory is ``max_memory_allocated``.
    Random weights cost the same arithmetic as trained ones: the times hold, the images are noise.
``glm``
    The single-trial GLM (``fithrf-denoise-rr``) on the independent generator of issue 13 (V = 20,000,
    6 runs x 200 volumes), on the CPU and on CUDA: time, r_trial and test-retest of both, and how far the
    two devices' betas differ.
``ridge``
    The ridge decoder (``decoding.ridge.fit_ridge_cv``, 8 alphas, one per target) on ``bench_decode.py``'s
    synthetic data (9,000 trials x 15,000 voxels -> 1,024 targets), CPU vs CUDA: fit time and test R².
``motion``
    Head-motion estimation on the analytic phantom (64x64x32, 100 volumes), CPU vs CUDA: time and error.

``--tiny`` swaps the full-size unCLIP for the tiny one of ``models.tiny`` (a CPU smoke run of this script,
used by ``tests/test_bench_cuda.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

#: The component sizes of Stable unCLIP-H, from the config.json files of
#: https://huggingface.co/stabilityai/stable-diffusion-2-1-unclip (unet/, vae/, text_encoder/,
#: image_encoder/): SD 2.1's 768-v UNet with a "projection" class embedding taking the noised image
#: embedding and its noise-level embedding (2 x 1024), the OpenCLIP ViT-H text tower (23 of its 24 layers,
#: as SD 2 uses the penultimate layer) and the OpenCLIP ViT-H/14 image tower.
FULL_SIZE = {
    "unet": dict(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
        upcast_attention=True, norm_num_groups=32, class_embed_type="projection",
        projection_class_embeddings_input_dim=2048,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=768, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    "text_encoder": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, projection_dim=512, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    ),
    "image_encoder": dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
    ),
    "embed_dim": 1024,
    "open_clip_arch": "ViT-H-14",
}


def full_size_modules(device="cuda", seed: int = 0) -> dict:
    """The five networks of Stable unCLIP-H (:data:`FULL_SIZE`) with random weights, created on ``device``.

    Created directly there (``torch.device`` as a context), so the ~2 billion random parameters are drawn
    on the GPU, not on the host (``"meta"`` builds them without memory, to count parameters).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        modules = dict(
            unet=UNet2DConditionModel(**FULL_SIZE["unet"]),
            vae=AutoencoderKL(**FULL_SIZE["vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**FULL_SIZE["text_encoder"])),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**FULL_SIZE["image_encoder"])),
            image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=FULL_SIZE["embed_dim"]),
        )
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def parameter_counts(modules: dict) -> dict:
    return {name: int(sum(p.numel() for p in module.parameters())) for name, module in modules.items()}


def build_full_size_unclip(device="cuda", dtype=None, seed: int = 0):
    """A ``StableUnCLIPImg2ImgPipeline`` with the full-size architectures and random weights, cast to
    ``dtype`` (fp16 by default) by the pipeline's own ``to``; returns it and its parameter counts."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from transformers import CLIPImageProcessor

    from bids_m2i.models.tiny import OPENAI_MEAN, OPENAI_STD, make_clip_tokenizer

    modules = full_size_modules(device, seed)
    pipeline = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224},
                                             image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        tokenizer=make_clip_tokenizer(),
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1, prediction_type="v_prediction", timestep_spacing="leading"),
        **modules,
    )
    pipeline = pipeline.to(dtype=dtype or torch.float16)  # the pipeline's own cast, as from_pretrained gives
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, parameter_counts(modules)


def _full_size_selector(device):
    """The best-of-N selector on a random open_clip ViT-H-14 built on ``device`` (fp32, as the app loads it)."""
    import open_clip
    import torch

    from bids_m2i.decoding.features import ClipExtractor
    from bids_m2i.decoding.select import ClipCosineSelector
    from bids_m2i.models.loading import OpenClipModel

    with torch.device(device):
        model = open_clip.create_model(FULL_SIZE["open_clip_arch"], pretrained=None, device=device)
    model = model.to(device).eval().requires_grad_(False)
    preprocess = open_clip.image_transform(224, is_train=False)
    loaded = OpenClipModel(model, preprocess, open_clip.get_tokenizer(FULL_SIZE["open_clip_arch"]), None,
                           {"model_cfg": open_clip.get_model_config(FULL_SIZE["open_clip_arch"])}, torch.device(device))
    return ClipCosineSelector(ClipExtractor(None, loaded=loaded)), int(sum(p.numel() for p in model.parameters()))


def _tiny(device, tmp: Path):
    from bids_m2i.decoding.features import ClipExtractor
    from bids_m2i.decoding.select import ClipCosineSelector
    from bids_m2i.models.loading import load_open_clip_folder
    from bids_m2i.models.tiny import TINY_EMBED_DIM, build_tiny_unclip_pipeline, make_tiny_open_clip

    pipeline = build_tiny_unclip_pipeline(seed=0).to(device)
    pipeline.set_progress_bar_config(disable=True)
    folder = make_tiny_open_clip(tmp / "open_clip", embed_dim=TINY_EMBED_DIM)
    selector = ClipCosineSelector(ClipExtractor(folder, loaded=load_open_clip_folder(folder, device)))
    return pipeline, selector, {"unet": int(sum(p.numel() for p in pipeline.unet.parameters()))}


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_unclip(device: str, tiny: bool, tmp: Path, ns=(1, 4, 16), steps: int = 20) -> dict:
    import torch
    from PIL import Image

    from bids_m2i.decoding.generate import GenerationSettings, generate_from_low_level, generate_unclip
    from bids_m2i.decoding.select import candidate_seeds

    cuda = device.startswith("cuda")
    start = time.perf_counter()
    if tiny:
        pipeline, selector, counts = _tiny(device, tmp)
        embed_dim, side = pipeline.image_normalizer.mean.shape[1], 32
    else:
        pipeline, counts = build_full_size_unclip(device)
        selector, counts["open_clip_ViT-H-14"] = _full_size_selector(device)
        embed_dim, side = FULL_SIZE["embed_dim"], 768
    _sync(device)
    out = {"build_s": round(time.perf_counter() - start, 2), "parameters": counts, "image_side": side,
           "dtype": str(pipeline.unet.dtype), "steps": steps, "rows": []}

    rng = np.random.default_rng(0)
    decoded = rng.standard_normal((1, embed_dim)).astype(np.float32)
    low_level = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))  # a pixels-decoder output size
    prompt = "a photograph of a red bicycle leaning on a wall"

    def one(n: int, path: str, batch_size: int) -> dict:
        settings = GenerationSettings(steps=steps, batch_size=batch_size)
        seeds = [int(s) for s in candidate_seeds(0, 1, n)[0]]
        embeds = np.repeat(decoded, n, axis=0)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        if path == "low-level+text":
            images = generate_from_low_level(pipeline, embeds, [low_level] * n, seeds, settings, prompts=[prompt] * n)
        else:
            images = generate_unclip(pipeline, embeds, seeds, settings)
        _sync(device)
        t1 = time.perf_counter()
        best, scores = selector.select([images], decoded)
        _sync(device)
        t2 = time.perf_counter()
        pixels = np.stack([np.asarray(im, dtype=np.float32) for im in images])
        row = {"path": path, "N": n, "batch_size": batch_size, "generate_s": round(t1 - t0, 3),
               "select_s": round(t2 - t1, 3), "s_per_image": round((t2 - t0) / n, 3),
               "chosen": int(best[0]), "image_size": list(images[0].size),
               "image_pixel_sd": round(float(pixels.std()), 2)}
        if cuda:
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            row["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 2)
        print(json.dumps(row), flush=True)
        return row

    one(1, "low-level+text", 4)  # warm-up: kernels, cuDNN autotuning, allocator
    default_batch = GenerationSettings().batch_size
    for n in ns:
        out["rows"].append(one(n, "low-level+text", default_batch))
    if cuda and max(ns) > default_batch:
        out["rows"].append(one(max(ns), "low-level+text", max(ns)))  # all candidates in one UNet batch
    out["rows"].append(one(1, "noise", default_batch))
    if cuda:
        out["weights_gib"] = round(torch.cuda.memory_allocated() / 2 ** 30, 2)
    return out


def bench_glm(device: str, threads: int, voxels: int) -> dict:
    import torch

    import bench_glm as B
    from glm_generators import simulate

    from bids_m2i.glm.estimate import estimate_single_trial_betas

    torch.set_num_threads(threads)
    session = simulate(n_voxels=voxels, seed=0)
    data = {"runs": session.runs, "tr": session.tr, "onsets": session.onsets, "durations": session.durations,
            "trial_run": session.trial_run, "stimulus": session.stimulus}
    runs, trials = B._ours_inputs(data)
    out = {"voxels": voxels, "threads": threads, "rows": []}
    betas = {}
    for dev in ("cpu", device) if device != "cpu" else ("cpu",):
        for attempt in ("cold", "warm"):
            _sync(dev)
            t0 = time.perf_counter()
            result = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_threads=threads,
                                                 device=dev)
            _sync(dev)
            elapsed = time.perf_counter() - t0
        b = np.asarray(result.betas, dtype=np.float64)
        betas[dev] = b
        row = {"device": dev, "fit_s_warm": round(elapsed, 2),
               "r_trial": round(float(np.median(B.r_trial(b, session.true_betas, session.responsive))), 4),
               "test_retest": round(float(np.median(B.test_retest(b[:, session.responsive], session.stimulus))), 4),
               "n_pcs": result.metadata.get("n_pcs"), "median_frac": result.metadata.get("median_ridge_fraction")}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if len(betas) == 2:
        a, b = betas["cpu"], betas[device]
        out["max_abs_diff"] = float(np.abs(a - b).max())
        out["median_voxel_r_cpu_vs_cuda"] = float(np.median(B.r_trial(a, b, np.ones(a.shape[1], bool))))
    return out


def bench_motion(device: str, threads: int) -> dict:
    import torch

    from bids_m2i.preproc.motion import estimate_motion
    from bids_m2i.preproc.phantom import make_motion_phantom, motion_error_mm

    torch.set_num_threads(threads)
    phantom = make_motion_phantom(n_volumes=100, seed=0)
    points = np.argwhere(phantom.brain_mask) @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    out = {"shape": list(phantom.data.shape), "threads": threads, "rows": []}
    for dev in ("cpu", device) if device != "cpu" else ("cpu",):
        estimate_motion(phantom.data, phantom.affine, n_threads=threads, device=dev)  # warm
        _sync(dev)
        t0 = time.perf_counter()
        result = estimate_motion(phantom.data, phantom.affine, n_threads=threads, device=dev)
        _sync(dev)
        elapsed = time.perf_counter() - t0  # before the error, whose numpy over every brain point takes ~1 s
        error = motion_error_mm(np.asarray(result.transforms), phantom.true_transforms, points)
        row = {"device": dev, "warm_s": round(elapsed, 3),
               "error_mean_mm": round(float(error.mean()), 4), "error_max_mm": round(float(error.max()), 4)}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    return out


def bench_ridge(device: str, threads: int, tmp: Path, n_train: int = 9000, n_voxels: int = 15000,
                n_targets: int = 1024) -> dict:
    """The ridge decoder (8 alphas, LOO, one per target) on bench_decode.py's synthetic data, CPU vs CUDA."""
    import torch

    from bench_decode import make_data, r2_mean

    from bids_m2i.decoding.ridge import fit_ridge_cv

    torch.set_num_threads(threads)
    folder = tmp / "ridge_data"
    folder.mkdir(parents=True, exist_ok=True)
    make_data(folder, n_train, max(10, n_train // 9), n_voxels, n_targets)
    X, Y = np.load(folder / "X_train.npy"), np.load(folder / "Y_train.npy")
    X_test, Y_test = np.load(folder / "X_test.npy"), np.load(folder / "Y_test.npy")
    alphas = np.logspace(2, 6, 8)
    out = {"trials": n_train, "voxels": n_voxels, "targets": n_targets, "threads": threads, "rows": []}
    for dev in ("cpu", device) if device != "cpu" else ("cpu",):
        if dev.startswith("cuda"):
            torch.zeros(1, device=dev)  # the CUDA context outside the timed fit
        _sync(dev)
        t0 = time.perf_counter()
        result = fit_ridge_cv(X, Y, alphas, device=dev)
        _sync(dev)
        row = {"device": dev, "fit_s": round(time.perf_counter() - t0, 2), "solver": result.solver,
               "test_r2": round(r2_mean(Y_test, result.predict(X_test)), 4)}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    return out


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    for name in ("diffusers", "transformers", "open_clip"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for <section>.json")
    parser.add_argument("--sections", nargs="+", default=["unclip", "glm", "ridge", "motion"],
                        choices=["unclip", "glm", "ridge", "motion"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of the CPU runs")
    parser.add_argument("--voxels", type=int, default=20000, help="GLM voxels")
    parser.add_argument("--ridge-size", type=int, nargs=3, default=[9000, 15000, 1024],
                        metavar=("TRIALS", "VOXELS", "TARGETS"))
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny unCLIP (CPU smoke run of this script)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        # checked before anything is written: without it the default device ended in torch's "Found no NVIDIA
        # driver" traceback (environment() asks the GPU's name), also for `--tiny`, the CPU smoke run
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
                         f"{torch.version.cuda}); pass --device cpu (with --tiny for a CPU smoke run of this script)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "environment.json").write_text(json.dumps(environment(args.device), indent=1))
    for section in args.sections:
        start = time.perf_counter()
        if section == "unclip":
            result = bench_unclip(args.device, args.tiny, args.out, tuple(args.candidates), args.steps)
        elif section == "glm":
            result = bench_glm(args.device, args.threads, args.voxels)
        elif section == "ridge":
            result = bench_ridge(args.device, args.threads, args.out, *args.ridge_size)
        else:
            result = bench_motion(args.device, args.threads)
        result["section_s"] = round(time.perf_counter() - start, 1)
        (args.out / f"{section}.json").write_text(json.dumps(result, indent=1))
        print(f"{section}: done in {result['section_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
