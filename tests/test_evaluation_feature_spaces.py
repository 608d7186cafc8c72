"""Feature extractors loaded from a models folder of random-weight networks saved as safetensors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bids_m2i.errors import BadDataError
from bids_m2i.models.tiny import build_eval_network
from bids_m2i.evaluation.feature_spaces import (
    extract_features,
    find_clip_dir,
    load_feature_extractors,
    models_manifest_is_tiny,
)

torch.set_num_threads(1)


def _save_network(models_dir, network, file_name, prefix="", drop=()):
    torch.manual_seed(0)
    model = build_eval_network(network).eval()
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(drop or "\0")}
    (models_dir / "eval").mkdir(parents=True, exist_ok=True)
    save_file(state, str(models_dir / "eval" / file_name))
    return model


def _images(n, side=48, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((side, side, 3)) for _ in range(n)]


def test_missing_folder_or_weights_offers_nothing(tmp_path):
    assert load_feature_extractors(None) == {}
    assert load_feature_extractors(tmp_path / "absent") == {}
    (tmp_path / "eval").mkdir()
    assert load_feature_extractors(tmp_path) == {}


def test_efficientnet_loads_saved_weights_and_matches_the_model(tmp_path):
    model = _save_network(tmp_path, "efficientnet_b1", "efficientnet_b1.safetensors", prefix="module.")
    extractors = load_feature_extractors(tmp_path, device="cpu")
    assert set(extractors) == {"effnet"}
    assert extractors["effnet"].source == "eval/efficientnet_b1.safetensors"
    images = _images(2)
    features = extract_features(extractors, images)["effnet"]
    assert features.shape == (2, 1280)
    # the same numbers as the original network on the same preprocessing (weights really loaded)
    from bids_m2i.evaluation.metrics import images_to_tensor

    batch = images_to_tensor(images, size=255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.avgpool(model.features((batch - mean) / std)).flatten(1).double().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_wrong_weights_are_a_clear_error(tmp_path):
    (tmp_path / "eval").mkdir()
    save_file({"nonsense": torch.zeros(3)}, str(tmp_path / "eval" / "efficientnet_b1.safetensors"))
    with pytest.raises(BadDataError, match="do not match"):
        load_feature_extractors(tmp_path, device="cpu")
    (tmp_path / "eval" / "efficientnet_b1.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadDataError, match="Cannot read"):
        load_feature_extractors(tmp_path, device="cpu")


def _tiny_clip(folder):
    """The project's tiny random-weight CLIP (``bids_m2i.models.tiny``, 16-d), and the same network built here
    from its config and weights file (the reference the loaded extractor must match)."""
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    from bids_m2i.models.tiny import make_tiny_open_clip

    make_tiny_open_clip(folder, embed_dim=16, seed=1)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    model = CLIP(**cfg["model_cfg"]).eval()
    model.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    return model


def test_clip_prefers_vit_l_14_and_loads_local_weights(tmp_path):
    _tiny_clip(tmp_path / "open_clip" / "ViT-H-14")
    assert find_clip_dir(tmp_path).name == "ViT-H-14"  # the decoding model's arch when L/14 is absent
    model = _tiny_clip(tmp_path / "open_clip" / "ViT-L-14")
    assert find_clip_dir(tmp_path).name == "ViT-L-14"
    extractors = load_feature_extractors(tmp_path, spaces=["clip"], device="cpu")
    assert set(extractors) == {"clip"} and extractors["clip"].source == "open_clip/ViT-L-14"
    images = _images(3)
    features = extractors["clip"](images)
    assert features.shape == (3, 16)
    from bids_m2i.evaluation.metrics import images_to_tensor

    batch = images_to_tensor(images, size=32, interpolation="bicubic")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.encode_image((batch - mean) / std).double().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_manifest_tiny_flag(tmp_path):
    assert not models_manifest_is_tiny(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"tiny": True, "files": []}))
    assert models_manifest_is_tiny(tmp_path)


@pytest.mark.slow
def test_all_torchvision_networks(tmp_path):
    _save_network(tmp_path, "alexnet", "alexnet.safetensors")
    _save_network(tmp_path, "inception_v3", "inception_v3.safetensors")
    _save_network(tmp_path, "efficientnet_b1", "efficientnet_b1.safetensors")
    _save_network(tmp_path, "swav", "swav_resnet50.safetensors", prefix="module.", drop="fc.")
    extractors = load_feature_extractors(tmp_path, device="cpu")
    assert set(extractors) == {"alexnet2", "alexnet5", "inception", "effnet", "swav"}
    features = extract_features(extractors, _images(2))
    shapes = {k: v.shape for k, v in features.items()}
    assert shapes == {"alexnet2": (2, 192 * 31 * 31), "alexnet5": (2, 256 * 15 * 15), "inception": (2, 2048),
                      "effnet": (2, 1280), "swav": (2, 2048)}
    # the two AlexNet spaces come from one forward pass of one network
    assert extractors["alexnet2"].extractor is extractors["alexnet5"].extractor


def test_models_folder_with_manifest_uses_its_clip_and_flags_tiny(tmp_path):
    from bids_m2i.models.tiny import make_tiny_models

    make_tiny_models(tmp_path, seed=0, include_eval=False)
    extractors = load_feature_extractors(tmp_path, device="cpu")
    assert set(extractors) == {"clip"}
    assert "tiny random weights" in extractors["clip"].source
    features = extractors["clip"](_images(2))
    assert features.shape[0] == 2 and np.isfinite(features).all()


@pytest.mark.slow
def test_models_folder_from_make_tiny(tmp_path):
    from bids_m2i.models.tiny import make_tiny_models

    make_tiny_models(tmp_path, seed=0, include_eval=True)
    extractors = load_feature_extractors(tmp_path, device="cpu")
    assert {"clip", "alexnet2", "alexnet5", "inception", "effnet", "swav"} <= set(extractors)
    assert all("tiny random weights" in e.source for e in extractors.values())
    features = extract_features(extractors, _images(2))
    assert features["inception"].shape == (2, 2048) and features["swav"].shape == (2, 2048)
    assert np.isfinite(features["clip"]).all()
