"""Inputs other than the BIDS dataset, 25th pass (issue qa25): the models folder and ``--shared-decoder``.

- A models folder another user may not read (a lab member's folder with group-only permissions, a root-owned
  copy): ``manifest.json`` gave 65 "Cannot read ... recreate it", a config 65 "not JSON (Permission denied)",
  the weights 65 "Not a readable safetensors file (No such file or directory)", each with the advice to
  delete and recreate the folder; a folder of the component or the models folder itself a PermissionError
  (exit 73 "Cannot write" from the CLI, or 1 from the loaders). Now 66 naming the first file or folder this
  user may not read, the uid, and to make it readable or use a copy; an execute-only (``711``) folder is fine.
  Run as uid 65534: as root nothing is unreadable.
- ``--shared-decoder FILE`` another user may not read: the sidecar gave 64 "not a readable shared decoder
  sidecar", the weights 65 "damaged or incomplete ... copy it again". Now 66, as above.
- ``--shared-decoder FILE`` copied without its ``.json``: 66 "shared decoder not found: FILE (+ .json sidecar)"
  named the file that is there. Now the message names the sidecar that is missing.
- A ``manifest.json`` edited by hand (a component without ``path``, ``"bytes": "12kB"``, ``shapes`` a list,
  ``roles`` a string, a file entry not an object) stopped the start-up check with exit 1 "unexpected failure"
  (KeyError, ValueError, AttributeError). Now 65 naming the manifest and the entry, before any step.
- An ``open_clip_config.json`` open_clip cannot build a model from (keys of another open_clip version, a text
  where a number goes, an architecture name instead of ``model_cfg``): the loader caught load errors only, and
  the decoding stage ended with exit 1 "unexpected failure: TypeError". Now 65 naming the config.
- A weights file that is a symbolic link leading nowhere (a Hugging Face cache snapshot or DataLad clone copied
  without its blobs): 66 "file is missing" for a file `ls` shows; now it names the link and how to copy it.
- fMRIPrep outputs (``--derivatives``) another user may not read, the usual case of a lab's shared fMRIPrep
  folder: an unreadable confounds table or dataset_description.json gave 73 "Cannot write ... choose an
  output/work folder you can write to"; a BOLD or mask 65 "rerun fMRIPrep for this participant (the file is
  damaged or incomplete)"; a participant's folder 66 "No fMRIPrep preprocessed BOLD ... run fMRIPrep on this
  participant first" (hours of needless fMRIPrep). Now 66 naming the file or folder, and that only read access
  is needed.
- ``--models-dir`` with the default ``--target pixels`` (for the feature metrics): the start-up check ran only
  for the clip target or the unclip generator, yet the evaluation step loads every metric network the
  manifest lists: a truncated CLIP weights file (or a malformed manifest) stopped the run at that last step,
  after preprocessing, the GLM and the decoding. Now checked at start-up (65, nothing started).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import DROP, NOBODY, folder_for_nobody, open_to_everyone, python_for_nobody

from bids_m2i.errors import BadDataError
from bids_m2i.models.store import check_models, write_manifest
from bids_m2i.models.tiny import make_tiny_open_clip

REPO = Path(__file__).resolve().parents[1]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root to drop privileges to uid 65534")

# every case in one unprivileged interpreter (a start each costs seconds): prints one JSON line per case
PROBE = """
import json, site, sys
site.addsitedir({site!r}); sys.path.insert(0, {repo!r})
from bids_m2i.errors import M2IError
from bids_m2i.models.store import check_models
from bids_m2i.decoding.shared import read_shared_sidecar
from bids_m2i.workflows.shared import _check_weights_complete
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "models":
            check_models(path, ["clip"], verify_hashes=True)
        else:
            read_shared_sidecar(path)
            _check_weights_complete(__import__("pathlib").Path(path))
        out = {{"code": 0}}
    except M2IError as exc:
        out = {{"code": exc.exit_code, "message": exc.message, "hint": exc.hint}}
    except Exception as exc:
        out = {{"code": 1, "message": repr(exc)}}
    print(json.dumps(out))
"""


def _tiny_models(root: Path) -> Path:
    make_tiny_open_clip(root / "open_clip" / "tiny", embed_dim=32)
    write_manifest(root, {"tiny": {"kind": "open_clip", "path": "open_clip/tiny", "source": "tests (random)",
                                   "licence": "none"}}, tiny=True,
                   roles={"clip_features": "tiny", "clip_metric": "tiny"})
    return root


def _shared_file(folder: Path) -> Path:
    from bids_m2i.decoding.shared import ParticipantData, train_shared_model
    from bids_m2i.workflows.shared import feature_info

    rng = np.random.default_rng(0)
    group = [ParticipantData(f"0{i}", rng.normal(size=(40, 30 + i)).astype(np.float32),
                             rng.normal(size=(40, 12)).astype(np.float32), np.array([f"s{k}" for k in range(40)]))
             for i in (1, 2)]
    model = train_shared_model(group, "pixels", n_components=3, feature_info=feature_info("pixels"), n_threads=1)
    return model.save(folder / "desc-sharedpixels_model.safetensors")


# (what to chmod, relative to the copy; mode; the path the message must name, relative; exit code)
MODELS_CASES = [
    ("manifest.json", 0o600, "manifest.json", 66),
    ("open_clip/tiny/open_clip_config.json", 0o600, "open_clip/tiny/open_clip_config.json", 66),
    ("open_clip/tiny/open_clip_model.safetensors", 0o600, "open_clip/tiny/open_clip_model.safetensors", 66),
    ("open_clip/tiny", 0o700, "open_clip/tiny", 66),
    (".", 0o700, ".", 66),
    (".", 0o711, None, 0),  # traversable without listing: nothing m2i needs is hidden
    ("open_clip", 0o711, None, 0),
]
SHARED_CASES = [("desc-sharedpixels_model.json", 0o600), ("desc-sharedpixels_model.safetensors", 0o600)]


@NEEDS_ROOT
def test_inputs_another_user_may_not_read_are_66_naming_them(tmp_path_factory):
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with folder_for_nobody("m2i-qa25-") as base:
        original = _tiny_models(base / "original")
        shared_original = _shared_file(base / "shared-original")
        open_to_everyone(base, 0o755)
        jobs, expected = [], []
        for i, (rel, mode, named, code) in enumerate(MODELS_CASES):
            copy = base / f"models-{i}"
            shutil.copytree(original, copy)
            (copy / rel).chmod(mode)
            jobs.append(("models", str(copy)))
            expected.append((code, None if named is None else (copy / named).resolve()))
        for i, (name, mode) in enumerate(SHARED_CASES):
            folder = base / f"shared-{i}"
            shutil.copytree(shared_original.parent, folder)
            (folder / name).chmod(mode)
            jobs.append(("shared", str(folder / shared_original.name)))
            expected.append((66, folder / name))
        script = PROBE.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO))
        result = subprocess.run([*DROP, python, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                                cwd="/", env={**os.environ, "HOME": "/nonexistent"}, timeout=120)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == len(jobs), result.stderr[-2000:]
        for (kind, path), (code, named), out in zip(jobs, expected, lines):
            assert out["code"] == code, (path, out)
            if code:
                assert out["message"] == f"Cannot read {named}: permission denied (m2i runs as uid {NOBODY})", out
                assert "readable by this user" in out["hint"] and "recreate the folder" not in out["hint"]


def test_shared_decoder_without_its_sidecar_names_the_sidecar(tmp_path, capsys, started):
    from bids_m2i.cli.run import run_cli
    from helpers import make_minimal_bids

    shared = _shared_file(tmp_path / "group")
    sidecar = shared.with_suffix(".json")
    sidecar.unlink()
    bids = make_minimal_bids(tmp_path / "bids")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--shared-decoder", str(shared)])
    err = capsys.readouterr().err
    assert code == 66 and started == []
    assert f"{sidecar} not found" in err and f"copy {sidecar.name}" in err


MANIFEST_EDITS = {
    "component without path": (lambda m: m["components"]["tiny"].pop("path"), "component 'tiny' needs a 'path'"),
    "component a string": (lambda m: m["components"].__setitem__("tiny", "open_clip/tiny"),
                           "component 'tiny' needs a 'path'"),
    "path outside the folder": (lambda m: m["components"]["tiny"].__setitem__("path", "../elsewhere"),
                                "component 'tiny' needs a 'path' inside the models folder"),
    "file entry a string": (lambda m: m["files"].__setitem__("open_clip/tiny/open_clip_config.json", "x"),
                            "file 'open_clip/tiny/open_clip_config.json' needs an object"),
    "bytes as text": (lambda m: m["files"]["open_clip/tiny/open_clip_config.json"].__setitem__("bytes", "1kB"),
                      "'bytes' must be a whole number"),
    "shapes a list": (lambda m: m["files"]["open_clip/tiny/open_clip_model.safetensors"].__setitem__("shapes", [1]),
                      "'shapes' must map tensor names"),
    "roles a string": (lambda m: m.__setitem__("roles", "tiny"), "'roles' must map role names"),
}


@pytest.fixture(scope="module")
def models_original(tmp_path_factory):
    return _tiny_models(tmp_path_factory.mktemp("models") / "m")


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_a_hand_edited_manifest_is_65_naming_the_entry(models_original, tmp_path, case):
    edit, words = MANIFEST_EDITS[case]
    models = tmp_path / "models"
    shutil.copytree(models_original, models)
    manifest = json.loads((models / "manifest.json").read_text())
    edit(manifest)
    (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadDataError) as info:
        check_models(models, ["clip"], verify_hashes=False)
    assert info.value.exit_code == 65
    assert str(models / "manifest.json") in info.value.message and words in info.value.message


def test_a_hand_edited_manifest_stops_the_cli_before_any_step(models_original, tmp_path, capsys, started):
    from bids_m2i.cli.run import run_cli
    from helpers import make_minimal_bids

    models = tmp_path / "models"
    shutil.copytree(models_original, models)
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["components"]["tiny"].pop("path")
    (models / "manifest.json").write_text(json.dumps(manifest))
    bids = make_minimal_bids(tmp_path / "bids")
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--target", "clip", "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert code == 65 and started == [], err[-2000:]
    assert "manifest.json is malformed" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before  # inputs never modified


def test_an_intact_models_folder_still_passes(models_original):
    check_models(models_original, ["clip"], verify_hashes=True)


CONFIG_EDITS = {  # open_clip_config.json of another open_clip version, or edited by hand
    "unknown key": lambda c: c["model_cfg"]["vision_cfg"].__setitem__("bogus", 1),
    "text for a number": lambda c: c["model_cfg"]["vision_cfg"].__setitem__("layers", "two"),
    "architecture name for model_cfg": lambda c: c.__setitem__("model_cfg", "ViT-H-14"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_an_open_clip_config_that_builds_no_model_is_65_naming_it(models_original, tmp_path, case):
    """Was exit 1 "unexpected failure: TypeError" at the decoding stage (the loader caught load errors only)."""
    from bids_m2i.models.loading import load_open_clip_folder

    folder = tmp_path / "tiny"
    shutil.copytree(models_original / "open_clip" / "tiny", folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    CONFIG_EDITS[case](config)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(BadDataError) as info:
        load_open_clip_folder(folder, device="cpu")
    assert info.value.exit_code == 65
    assert str(folder / "open_clip_config.json") in info.value.message and "can build" in info.value.message


def test_a_weights_file_that_is_a_dangling_link_says_so(models_original, tmp_path):
    """A models folder copied from a Hugging Face cache snapshot (symbolic links into ``blobs/``) without its
    blobs: 66 "file is missing" for a file ``ls`` shows. Now the message says it is a link leading nowhere and
    how to copy the folder with its links resolved."""
    from bids_m2i.errors import InputMissingError

    models = tmp_path / "models"
    shutil.copytree(models_original, models)
    weights = models / "open_clip" / "tiny" / "open_clip_model.safetensors"
    weights.unlink()
    weights.symlink_to("../../../blobs/0123abcd")
    with pytest.raises(InputMissingError) as info:
        check_models(models, ["clip"], verify_hashes=False)
    assert info.value.exit_code == 66
    assert "open_clip_model.safetensors: a symbolic link to ../../../blobs/0123abcd" in info.value.message
    assert "cp -rL" in info.value.message


# each case: what to chmod in fMRIPrep's folder (relative), its mode; the message names that path
FMRIPREP_CASES = [
    ("sub-01/func/sub-01_task-perception_run-1_desc-confounds_timeseries.tsv", 0o600),
    ("sub-01/func/sub-01_task-perception_run-1_space-T1w_desc-preproc_bold.nii.gz", 0o600),
    ("sub-01/func/sub-01_task-perception_run-1_space-T1w_desc-brain_mask.nii.gz", 0o600),
    ("sub-01", 0o700),
    ("dataset_description.json", 0o600),
]
# the CLI with the workflow replaced by a marker, once per case in one unprivileged interpreter
CLI_PROBE = """
import json, site, sys
site.addsitedir({site!r}); sys.path.insert(0, {repo!r})
import bids_m2i.workflows.base as base
base.run_participant_workflows = lambda *a, **k: print("WORKFLOW-START", file=sys.stderr)
from bids_m2i.cli.run import run_cli
for i, args in enumerate(json.loads(sys.argv[1])):
    code = run_cli(args)
    print(f"@@CASE {{i}} {{code}}", file=sys.stderr, flush=True)
"""


@NEEDS_ROOT
def test_fmriprep_outputs_another_user_may_not_read_are_66_naming_them():
    from helpers import make_minimal_bids
    from test_fmriprep_inputs import make_fmriprep_tree

    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with folder_for_nobody("m2i-qa25-fmriprep-") as base:
        bids = make_minimal_bids(base / "bids")
        original = make_fmriprep_tree(bids, base / "fmriprep")
        open_to_everyone(base)
        cases, named = [], []
        for i, (rel, mode) in enumerate([(None, None), *FMRIPREP_CASES]):
            copy = base / f"fmriprep-{i}"
            shutil.copytree(original, copy)
            if rel is not None:
                (copy / rel).chmod(mode)
            named.append(None if rel is None else copy / rel)
            cases.append([str(bids), str(base / f"out-{i}"), "participant", "-w", str(base / f"work-{i}"),
                          "--skip-bids-validation", "--stop-after", "glm", "--derivatives", str(copy)])
        script = CLI_PROBE.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO))
        result = subprocess.run([*DROP, python, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                                cwd=str(base), env={**os.environ, "HOME": "/nonexistent"}, timeout=300)
        outputs = result.stderr.split("@@CASE ")
        assert len(outputs) == len(cases) + 1, result.stderr[-3000:]
        assert "WORKFLOW-START" in outputs[0] and outputs[1].startswith("0 ")  # the readable copy starts
        for i, path in enumerate(named[1:], start=1):
            text = outputs[i]  # the messages of case i come before its "@@CASE i code" line
            assert outputs[i + 1].startswith(f"{i} 66"), text[-2000:]
            assert f"Cannot read {path}: permission denied (m2i runs as uid {NOBODY})" in text, text[-2000:]
            assert "no need to rerun fMRIPrep" in text and "Traceback" not in text
            assert "WORKFLOW-START" not in text


@pytest.mark.parametrize("damage", ["none", "truncated weights", "malformed manifest"])
def test_metric_models_are_checked_at_start_up_for_pixels(models_original, tiny_dataset, tmp_path, capsys,
                                                          started, damage):
    from bids_m2i.cli.run import run_cli

    models = tmp_path / "models"
    shutil.copytree(models_original, models)
    if damage == "truncated weights":
        weights = models / "open_clip" / "tiny" / "open_clip_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "malformed manifest":
        manifest = json.loads((models / "manifest.json").read_text())
        manifest["roles"] = "tiny"
        (models / "manifest.json").write_text(json.dumps(manifest))
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--models-dir", str(models)])
    err = capsys.readouterr().err
    if damage == "none":
        assert code == 0 and started == [True], err[-2000:]
    else:
        assert code == 65 and started == [], err[-2000:]
        assert ("open_clip_model.safetensors: 5000 bytes" if damage == "truncated weights"
                else "manifest.json is malformed") in err


def test_a_models_dir_that_does_not_exist_still_only_skips_the_metrics(tiny_dataset, tmp_path, started):
    from bids_m2i.cli.run import run_cli

    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--models-dir", str(tmp_path / "none")])
    assert code == 0 and started == [True]
