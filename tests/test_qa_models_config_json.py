"""A models folder whose ``open_clip_config.json`` is not JSON but has the manifest's size (a file edited by
hand and saved broken, a bit flip on a cluster file system).

The start-up check compared sizes and tensor shapes only: it passed, and the decoding stage, after the
preprocessing and the GLM, ended with exit 1 "unexpected failure: JSONDecodeError". Now the start-up check
parses every JSON file of the components it checks (65 naming the file), and the loader turns a bad config
into 65 too.
"""

from __future__ import annotations

import pytest

from bids_m2i.errors import BadDataError
from bids_m2i.models.loading import load_open_clip_folder
from bids_m2i.models.store import check_models, write_manifest
from bids_m2i.models.tiny import make_tiny_open_clip


@pytest.fixture
def models(tmp_path):
    """A models folder with one tiny random-weight open_clip (clip target only)."""
    root = tmp_path / "models"
    make_tiny_open_clip(root / "open_clip" / "tiny", embed_dim=32)
    write_manifest(root, {"tiny": {"kind": "open_clip", "path": "open_clip/tiny", "source": "tests (random)",
                                   "licence": "none"}}, tiny=True,
                   roles={"clip_features": "tiny", "clip_metric": "tiny"})
    return root


def _break_same_size(path):
    text = path.read_text()
    path.write_text("#" + text[1:])  # same byte count: the size check cannot see it


def test_intact_folder_passes(models):
    check_models(models, ["clip"], verify_hashes=False)


def test_config_not_json_is_65_at_start_up(models):
    config = models / "open_clip" / "tiny" / "open_clip_config.json"
    _break_same_size(config)
    with pytest.raises(BadDataError) as info:
        check_models(models, ["clip"], verify_hashes=False)
    assert info.value.exit_code == 65 and "open_clip_config.json: not JSON" in str(info.value)


def test_loader_config_not_json_is_65(models):
    folder = models / "open_clip" / "tiny"
    _break_same_size(folder / "open_clip_config.json")
    with pytest.raises(BadDataError, match="open_clip_config.json is not JSON"):
        load_open_clip_folder(folder, device="cpu")
