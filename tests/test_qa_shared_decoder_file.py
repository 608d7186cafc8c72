"""``--shared-decoder FILE`` whose weights are damaged (a copy from the cluster cut short, or the .json copied
without its weights being complete).

The start-up check read only the JSON sidecar: a truncated .safetensors passed it, and the run failed at
the decoding stage, after preprocessing and the GLM, with 64 (a "usage error"). Now the start-up check reads
the weights' header too: 65 (bad data) before any step, naming the file and to copy it again.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.decoding.shared import ParticipantData, train_shared_model
from bids_m2i.workflows.shared import feature_info
from helpers import make_minimal_bids


@pytest.fixture
def shared_file(tmp_path):
    """A shared pixels decoder trained on random numbers (a file-format test, not a decoder)."""
    rng = np.random.default_rng(0)
    group = [ParticipantData(f"0{i}", rng.normal(size=(40, 30 + i)).astype(np.float32),
                             rng.normal(size=(40, 12)).astype(np.float32), np.array([f"s{k}" for k in range(40)]))
             for i in (1, 2)]
    model = train_shared_model(group, "pixels", n_components=3, feature_info=feature_info("pixels"), n_threads=1)
    return model.save(tmp_path / "group" / "desc-sharedpixels_model.safetensors")


def _run(tmp_path, shared):
    bids = make_minimal_bids(tmp_path / "bids")
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--shared-decoder", str(shared)])


def test_an_intact_shared_decoder_passes_the_start_up_check(tmp_path, started, shared_file):
    assert _run(tmp_path, shared_file) == 0 and started == [True]


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_shared_decoder_is_65_before_any_step(tmp_path, capsys, started, shared_file, keep):
    data = shared_file.read_bytes()
    shared_file.write_bytes(data[:int(len(data) * keep)])
    assert _run(tmp_path, shared_file) == 65
    err = capsys.readouterr().err
    assert shared_file.name in err and "copy it again" in err and started == []


@pytest.mark.parametrize("damage", [
    "meta['FeatureInfo'] = None",          # before: exit 1 "unexpected failure: TypeError" at start-up
    "meta['Settings'] = None",             # before: passed the check, exit 1 AttributeError after the GLM
    "del meta['FeatureSpace']",            # before: 64 "decodes 'None' features ... add --target None"
    "meta['FeatureSpace'] = 3",
    "meta['Participants'] = 'sub-01'",
    "meta['Participants'][0].pop('index')",
])
def test_a_damaged_sidecar_is_65_before_any_step_naming_it(tmp_path, capsys, started, shared_file, damage):
    """A sidecar of the right format whose fields are missing or of the wrong type (edited by hand, merged
    badly): 65 before any step, naming the sidecar and the field, never a traceback or exit 1 hours later."""
    import json

    sidecar = shared_file.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    exec(damage)
    sidecar.write_text(json.dumps(meta))
    assert _run(tmp_path, shared_file) == 65
    err = capsys.readouterr().err
    assert sidecar.name in err and "unexpected" not in err and "None" not in err and started == []
