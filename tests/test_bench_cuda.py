"""benchmarks/bench_cuda.py: the GPU checks' script runs here on the CPU (tiny models), and its full-size
unCLIP has the published component sizes (counted on torch's meta device: no memory, no GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_cuda  # noqa: E402


def test_full_size_unclip_has_the_published_component_sizes():
    counts = bench_cuda.parameter_counts(bench_cuda.full_size_modules("meta"))
    # SD 2.x UNet: 865.9 M parameters, plus the unCLIP class-embedding projection (2048 -> 1280 -> 1280)
    assert 865e6 < counts["unet"] < 872e6
    assert counts["unet"] - 865_910_724 == 2048 * 1280 + 1280 + 1280 * 1280 + 1280
    assert counts["vae"] == 83_653_863  # the SD KL-f8 autoencoder
    # OpenCLIP ViT-H/14: image tower 632.1 M; text tower 354.0 M with 24 layers, SD 2 keeps 23 of them
    assert abs(counts["image_encoder"] - 632.08e6) < 0.1e6
    assert 335e6 < counts["text_encoder"] < 345e6
    assert counts["image_normalizer"] == 2 * bench_cuda.FULL_SIZE["embed_dim"]


def test_the_script_runs_on_the_cpu_with_tiny_models(tmp_path):
    out = tmp_path / "out"
    assert bench_cuda.main(["--out", str(out), "--device", "cpu", "--tiny", "--sections", "unclip", "glm", "ridge",
                            "--candidates", "1", "3", "--steps", "2", "--voxels", "600", "--threads", "1",
                            "--ridge-size", "2000", "1000", "8"]) == 0
    unclip = json.loads((out / "unclip.json").read_text())
    rows = {(r["path"], r["N"]): r for r in unclip["rows"]}
    assert set(rows) == {("low-level+text", 1), ("low-level+text", 3), ("noise", 1)}
    assert all(r["image_size"] == [32, 32] and r["s_per_image"] > 0 for r in rows.values())
    assert 0 <= rows[("low-level+text", 3)]["chosen"] < 3
    glm = json.loads((out / "glm.json").read_text())
    assert [r["device"] for r in glm["rows"]] == ["cpu"] and 0 < glm["rows"][0]["r_trial"] <= 1
    ridge = json.loads((out / "ridge.json").read_text())
    assert [r["device"] for r in ridge["rows"]] == ["cpu"] and ridge["rows"][0]["test_r2"] > 0.05  # above chance (0)
    assert json.loads((out / "environment.json").read_text())["torch"]


def test_clip_extractor_takes_a_model_built_in_memory(tmp_path):
    """The selector of bench_cuda.py scores with a CLIP built in memory: no folder, no files to check."""
    from PIL import Image

    from bids_m2i.decoding.features import ClipExtractor
    from bids_m2i.errors import UsageError
    from bids_m2i.models.loading import load_open_clip_folder
    from bids_m2i.models.tiny import make_tiny_open_clip

    folder = make_tiny_open_clip(tmp_path / "clip", embed_dim=16)
    loaded = load_open_clip_folder(folder, "cpu")
    in_memory = type(loaded)(loaded.model, loaded.preprocess, loaded.tokenizer, None, loaded.config, loaded.device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    a = ClipExtractor(None, loaded=in_memory)
    b = ClipExtractor(folder)
    assert a.dim == b.dim == 16
    np.testing.assert_array_equal(a.encode_images([image]), b.encode_images([image]))
    with pytest.raises(UsageError):
        a.fingerprint()
    assert ClipExtractor(None, loaded=loaded).fingerprint() == b.fingerprint()


def test_without_a_gpu_the_default_device_stops_with_a_message_not_a_traceback(tmp_path, capsys):
    """``--device`` defaults to ``cuda``: on a machine without a GPU (the first try of ``--tiny``, "a CPU smoke
    run") it ended in torch's RuntimeError traceback from ``environment()``. Now a usage error (exit 2) that
    says to pass ``--device cpu``, before any file is written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        bench_cuda.main(["--out", str(out), "--tiny", "--sections", "motion"])
    assert stopped.value.code == 2
    assert "--device cpu" in capsys.readouterr().err
    assert not out.exists()
