"""Models folder: make-tiny, manifest, check (missing / mismatched / pickles), list, prepare's refusal, loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bids_m2i.errors import BadDataError, InputMissingError, UsageError
from bids_m2i.models import store
from bids_m2i.models.cli import run_cli
from bids_m2i.models.store import check_models, read_manifest, sha256_of

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny models folder (no evaluation networks: those are ~250 MB), built once per session."""
    from bids_m2i.models.tiny import make_tiny_models

    folder = tmp_path_factory.mktemp("models") / "tiny"
    make_tiny_models(folder, seed=0, include_eval=False)
    return folder


@pytest.fixture()
def tiny_copy(tiny_dir, tmp_path):
    """A private copy to damage."""
    target = tmp_path / "models"
    shutil.copytree(tiny_dir, target)
    return target


def _run(args, capsys):
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ make-tiny


def test_make_tiny_then_check_passes(tiny_dir, capsys):
    code, out, err = _run(["check", tiny_dir, "--for", "clip,unclip"], capsys)
    assert code == 0, err
    assert "OK for clip,unclip" in out
    assert "noise" in out  # the tiny warning is printed


def test_manifest_records_hashes_shapes_and_tiny(tiny_dir):
    manifest = read_manifest(tiny_dir)
    assert manifest["tiny"] is True and "noise" in manifest["warning"]
    assert set(manifest["components"]) == {"unclip", "open_clip/tiny-ViT"}
    entry = manifest["files"]["unclip/unet/diffusion_pytorch_model.safetensors"]
    assert entry["sha256"] == sha256_of(tiny_dir / "unclip/unet/diffusion_pytorch_model.safetensors")
    from safetensors.torch import load_file

    unet = load_file(tiny_dir / "unclip/unet/diffusion_pytorch_model.safetensors")
    assert entry["shapes"]["conv_in.weight"] == list(unet["conv_in.weight"].shape)
    # the class embedding takes the embedding plus its noise-level embedding: 2 x 32
    assert entry["shapes"]["class_embedding.linear_1.weight"][1] == 64
    # clip -> unclip works end to end only if the dims agree
    comps = manifest["components"]
    assert comps["unclip"]["image_embed_dim"] == comps["open_clip/tiny-ViT"]["embed_dim"] == 32
    # no pickle anywhere
    assert not [p for p in tiny_dir.rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pth", ".ckpt")]


def test_tiny_weights_follow_the_seed():
    from bids_m2i.models.tiny import build_tiny_unclip_pipeline

    a = build_tiny_unclip_pipeline(seed=3).unet.conv_in.weight
    b = build_tiny_unclip_pipeline(seed=3).unet.conv_in.weight
    c = build_tiny_unclip_pipeline(seed=4).unet.conv_in.weight
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_tiny_tokenizer_is_the_real_clip_bpe(tiny_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_dir / "unclip" / "tokenizer")
    ids = tokenizer("a photo of a cat")["input_ids"]
    # CLIP's known ids: <|startoftext|>=49406, "a"=320, "photo"=1125, "of"=539, "cat"=2368, <|endoftext|>=49407
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ------------------------------------------------------------------------------------------------ check


def test_check_missing_file_is_exit_66_and_names_it(tiny_copy, capsys):
    (tiny_copy / "unclip/unet/diffusion_pytorch_model.safetensors").unlink()
    code, out, err = _run(["check", tiny_copy, "--for", "unclip"], capsys)
    assert code == 66
    assert "unclip/unet/diffusion_pytorch_model.safetensors: file is missing" in err
    assert "Traceback" not in err and "m2i-models prepare" in err


def test_check_missing_manifest_is_66(tiny_copy):
    (tiny_copy / "manifest.json").unlink()
    with pytest.raises(InputMissingError):
        check_models(tiny_copy)


def test_check_eval_on_folder_without_eval_is_66(tiny_dir, capsys):
    code, _, err = _run(["check", tiny_dir, "--for", "eval"], capsys)
    assert code == 66
    assert "eval/alexnet" in err and "eval/swav" in err


def test_check_wrong_sha_is_65(tiny_copy, capsys):
    path = tiny_copy / "unclip/vae/diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, same header, different weights
    path.write_bytes(bytes(data))
    code, _, err = _run(["check", tiny_copy, "--for", "unclip"], capsys)
    assert code == 65
    assert "unclip/vae/diffusion_pytorch_model.safetensors: sha256 differs" in err
    # --no-hash cannot see a same-size, same-shape change: documented, and shows the hash is what caught it
    code, _, _ = _run(["check", tiny_copy, "--for", "unclip", "--no-hash"], capsys)
    assert code == 0


def test_check_wrong_shape_is_65(tiny_copy, capsys):
    from safetensors.torch import load_file, save_file

    rel = "unclip/image_normalizer/diffusion_pytorch_model.safetensors"
    tensors = load_file(tiny_copy / rel)
    tensors = {k: v.reshape(-1) for k, v in tensors.items()}  # (1, 32) -> (32,)
    save_file(tensors, str(tiny_copy / rel))
    # make the size agree with the manifest so that only the shape check can catch it
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["files"][rel]["bytes"] = (tiny_copy / rel).stat().st_size
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(["check", tiny_copy, "--for", "unclip", "--no-hash"], capsys)
    assert code == 65
    assert f"{rel}: tensor shapes differ" in err and "[32] instead of [1, 32]" in err


def test_check_size_mismatch_is_65(tiny_copy):
    path = tiny_copy / "unclip/unet/config.json"
    path.write_text(path.read_text() + " ")
    with pytest.raises(BadDataError, match="unet/config.json: .* bytes"):
        check_models(tiny_copy, ["unclip"])


@pytest.mark.parametrize("name", ["unclip/unet/diffusion_pytorch_model.bin", "open_clip/tiny-ViT/open_clip_pytorch_model.pt"])
def test_check_pickle_present_is_65(tiny_copy, capsys, name):
    torch.save({"w": torch.zeros(2)}, tiny_copy / name)
    code, _, err = _run(["check", tiny_copy, "--for", "clip,unclip"], capsys)
    assert code == 65
    assert name in err and "pickle" in err


def test_check_code_file_is_65(tiny_copy):
    (tiny_copy / "unclip/unet/custom_unet.py").write_text("import os\n")
    with pytest.raises(BadDataError, match="custom_unet.py: code"):
        check_models(tiny_copy, ["unclip"])


def test_check_refuses_unreviewed_pipeline_classes(tiny_copy):
    index_path = tiny_copy / "unclip/model_index.json"
    index = json.loads(index_path.read_text())
    index["unet"] = ["my_module", "MyUNet"]
    index_path.write_text(json.dumps(index))
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    entry = manifest["files"]["unclip/model_index.json"]
    entry["bytes"], entry["sha256"] = index_path.stat().st_size, sha256_of(index_path)
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadDataError, match="unet is \\['my_module', 'MyUNet'\\]"):
        check_models(tiny_copy, ["unclip"])


def test_check_embedding_dim_mismatch_is_65(tiny_copy):
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["components"]["open_clip/tiny-ViT"]["embed_dim"] = 768
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadDataError, match="768-d image embeddings but unclip expects 32-d"):
        check_models(tiny_copy, ["unclip"])
    check_models(tiny_copy, ["clip"])  # clip alone does not care


def test_check_unknown_purpose_is_64(tiny_dir, capsys):
    code, _, err = _run(["check", tiny_dir, "--for", "clip,video"], capsys)
    assert code == 64 and "clip,unclip,eval" in err


# ------------------------------------------------------------------------------------------------ list


def test_list_prints_components(tiny_dir, capsys):
    code, out, err = _run(["list", tiny_dir], capsys)
    assert code == 0, err
    assert "unclip" in out and "open_clip/tiny-ViT" in out and "tiny=yes" in out
    assert "role clip_features: open_clip/tiny-ViT" in out
    assert "WARNING" in out and "noise" in out


def test_list_without_manifest_is_66(tmp_path, capsys):
    code, _, err = _run(["list", tmp_path], capsys)
    assert code == 66 and "manifest.json" in err


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_refuses_without_network(tmp_path, capsys, monkeypatch):
    from bids_m2i.models import prepare

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(prepare, "network_available", lambda *a, **k: False)
    target = tmp_path / "real"
    code, _, err = _run(["prepare", target], capsys)
    assert code == 66
    assert "needs a network" in err and "Traceback" not in err
    assert not target.exists()  # nothing written


def test_prepare_refuses_when_hf_offline(tmp_path, capsys, monkeypatch):
    from bids_m2i.models import prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(prepare, "network_available", lambda *a, **k: True)
    code, _, err = _run(["prepare", tmp_path / "real"], capsys)
    assert code == 66 and "HF_HUB_OFFLINE" in err


def test_prepare_refuses_to_mix_real_into_tiny(tiny_dir, capsys, monkeypatch):
    from bids_m2i.models import prepare

    monkeypatch.setattr(prepare, "network_available", lambda *a, **k: True)
    code, _, err = _run(["prepare", tiny_dir], capsys)
    assert code == 64 and "tiny" in err


# ------------------------------------------------------------------------------------------------ resolve, metadata


def test_resolve_models_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("M2I_MODELS_DIR", raising=False)
    with pytest.raises(UsageError):
        store.resolve_models_dir(None)
    monkeypatch.setenv("M2I_MODELS_DIR", str(tmp_path))
    assert store.resolve_models_dir(None) == tmp_path
    with pytest.raises(InputMissingError):
        store.resolve_models_dir(tmp_path / "absent")


def test_models_metadata_says_tiny(tiny_dir):
    meta = store.models_metadata(tiny_dir, ["unclip"])
    assert meta["ModelsTiny"] is True and "noise" in meta["Warning"]
    assert set(meta["Models"]) == {"unclip"}


# ------------------------------------------------------------------------------------------------ loading


def test_load_open_clip_tiny_gives_embeddings_of_unclip_size(tiny_dir):
    from PIL import Image

    from bids_m2i.models.loading import load_open_clip

    model, preprocess, info = load_open_clip(tiny_dir, device="cpu")
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        features = model.encode_image(preprocess(image)[None])
    assert features.shape == (1, 32) and info["embed_dim"] == 32 and info["tiny"] is True


def test_load_unclip_refuses_a_pickle(tiny_copy):
    from bids_m2i.models.loading import load_unclip_pipeline

    torch.save({"w": torch.zeros(1)}, tiny_copy / "unclip/vae/diffusion_pytorch_model.bin")
    with pytest.raises(BadDataError, match="pickle"):
        load_unclip_pipeline(tiny_copy, device="cpu")


def test_load_eval_network_roundtrip_and_dtype(tmp_path):
    from bids_m2i.models.loading import load_eval_network
    from bids_m2i.models.tiny import build_eval_network, save_state_dict

    torch.manual_seed(0)
    network = build_eval_network("efficientnet_b1")
    save_state_dict(network, tmp_path / "eval/efficientnet_b1.safetensors", dtype=torch.float16)
    store.write_manifest(
        tmp_path,
        {"eval/efficientnet_b1": {"kind": "eval", "path": "eval/efficientnet_b1.safetensors", "source": "t", "licence": "t"}},
        tiny=True,
    )
    loaded = load_eval_network(tmp_path, "efficientnet_b1", device="cpu")
    reference = network.features[0][0].weight.detach().half().float()
    assert torch.equal(loaded.features[0][0].weight, reference)
    assert loaded.features[0][0].weight.dtype == torch.float32
    # the other evaluation networks are missing: check --for eval says which
    with pytest.raises(InputMissingError, match="eval/alexnet"):
        check_models(tmp_path, ["eval"])


class _Payload:
    """An arbitrary object: unpickling it would import and build code."""


def test_load_weights_file_refuses_objects(tmp_path):
    from bids_m2i.models.loading import load_weights_file

    torch.save({"obj": _Payload()}, tmp_path / "bad.pt")
    with pytest.raises(BadDataError, match="refused"):
        load_weights_file(tmp_path / "bad.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    assert torch.equal(load_weights_file(tmp_path / "good.pt")["w"], torch.ones(2))


def test_prepare_pipeline_with_downloads_replaced_by_local_fakes(tiny_dir, tmp_path, monkeypatch):
    """prepare's conversion and manifest code, run offline: each download is replaced by a local stand-in.

    The stand-ins return what the real sources return (a diffusers snapshot folder, an open_clip model,
    torchvision / SwAV state dicts with SwAV's "module." prefix and extra heads); the real downloads
    themselves cannot run here.
    """
    import huggingface_hub
    import open_clip
    import torchvision

    from bids_m2i.models import prepare
    from bids_m2i.models.tiny import build_eval_network, tiny_open_clip_config

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(prepare, "network_available", lambda *a, **k: True)
    # two of the four networks keep the test small (AlexNet alone is 240 MB in float32)
    monkeypatch.setattr(prepare, "EVAL_NETWORKS", ("efficientnet_b1", "swav"))

    def fake_snapshot(repo, local_dir, allow_patterns, ignore_patterns):
        assert "*.ckpt" in ignore_patterns and "*.bin" in ignore_patterns
        shutil.copytree(tiny_dir / "unclip", local_dir)
        return str(local_dir)

    tiny_cfg = tiny_open_clip_config(embed_dim=32)["model_cfg"]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(open_clip, "create_model", lambda arch, pretrained, cache_dir: open_clip.CLIP(**tiny_cfg))
    monkeypatch.setattr(open_clip, "get_model_config", lambda arch: dict(tiny_cfg))

    def fake_weights(self, progress, check_hash):
        name = {"AlexNet": "alexnet", "Inception": "inception_v3", "EfficientNet": "efficientnet_b1"}
        key = next(v for k, v in name.items() if k in type(self).__name__)
        return build_eval_network(key).state_dict()

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", fake_weights)
    swav_trunk = build_eval_network("swav").state_dict()
    swav_checkpoint = {f"module.{k}": v for k, v in swav_trunk.items()}
    swav_checkpoint["module.projection_head.0.weight"] = torch.zeros(2, 2)  # dropped by prepare
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, map_location, weights_only: swav_checkpoint)

    target = tmp_path / "real"
    prepare.prepare_models(target)
    manifest = read_manifest(target)
    assert manifest["tiny"] is False and "warning" not in manifest
    assert set(manifest["components"]) == {
        "unclip", "open_clip/ViT-H-14", "open_clip/ViT-L-14", "eval/efficientnet_b1", "eval/swav",
    }
    assert manifest["components"]["open_clip/ViT-L-14"]["pretrained"] == "openai"
    assert json.loads((target / "open_clip/ViT-L-14/open_clip_config.json").read_text())["model_cfg"]["quick_gelu"]
    assert not (target / ".download").exists()
    check_models(target, ["clip", "unclip"])  # everything recorded, no pickles left
    check_models(target, components=["eval/efficientnet_b1", "eval/swav"])
    from bids_m2i.models.loading import load_eval_network

    swav = load_eval_network(target, "swav", device="cpu")
    assert torch.equal(swav.conv1.weight, swav_trunk["conv1.weight"])
