"""Bad inputs of the BIDS side found by the fuzz campaign fuzz19 (F3, F9-F13, F15, F16, F18).

Each stopped with 1 ("unexpected failure"), with a message about another file or cause, only after the
preprocessing, or not at all. Now each is the exit code of its kind, before any step, naming the file:

- F3: ``stim_file_template = "{stimulus}.png"`` (the documented example) on events with a ``stimulus`` column gave
  1 (``str.format`` got ``stimulus`` twice); a template that cannot be filled is 64 naming it and the map.
- F9: a JSON file nested too deeply for Python's parser (RecursionError) is 65 naming it.
- F10: a BOLD whose voxel-to-world affine cannot be inverted stopped motion correction with 1; now 65 at start.
- F11: ``--dummy-scans`` at a run's length: 65 "Run 01 has only 1 volumes -> check the BOLD file" after the
  preprocessing; now 64 at start naming the option and the run.
- F12: a folder where a stimulus image should be: "img.png differs only in letter case from img.png".
- F13: an empty ``stimuli/stimuli.tsv`` was called an empty *events* file, with advice about runs.
- F15: events without their BOLD (deleted, not fetched) were dropped without a word (exit 0 stays).
- F16: filter file ``"run": 1.5`` selected run 1, a huge integer gave 1 (OverflowError), an object 18.
- F18: a ``_bold.json`` folder gave "RepetitionTime is missing"; a ``stimuli.tsv`` folder was ignored silently;
  a gzip-compressed events file gave "line 3 has 2 fields".
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids

RUN = "sub-01_task-perception_run-01"


def _cli(bids: Path, tmp_path: Path, *extra) -> int:
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", *extra])


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _func(bids: Path) -> Path:
    return bids / "sub-01" / "func"


# --- F3: stim_file_template ---------------------------------------------------------------------------------

def _events_map(tmp_path: Path, template: str) -> Path:
    path = tmp_path / "map.toml"
    path.write_text('[task.perception]\nrole_column = "trial_type"\ntrial = ["stimulus"]\ncondition = "perception"\n'
                    f'cue = "none"\nstimulus_column = "stimulus"\nstim_file_template = {json.dumps(template)}\n')
    return path


def test_stim_file_template_with_a_stimulus_column_fills_it(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")  # its events have a `stimulus` column
    assert _cli(bids, tmp_path, "--print-trials", "--events-map", str(_events_map(tmp_path, "{stimulus}.png"))) == 0
    captured = capsys.readouterr()
    assert "total: 6 trials" in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("template", ["{stimulus.upper}.png", "{stimulus[x]}.png", "{no_such_column}.png", "{}.png"])
def test_stim_file_template_that_cannot_be_filled_is_64(tmp_path, capsys, template):
    bids = make_minimal_bids(tmp_path / "bids")
    events_map = _events_map(tmp_path, template)
    assert _cli(bids, tmp_path, "--print-trials", "--events-map", str(events_map)) == 64
    err = _err(capsys)
    assert template in err and str(events_map) in err and "unexpected failure" not in err


# --- F9: JSON nested too deeply ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dataset_description.json", f"sub-01/func/{RUN}_bold.json"])
def test_deeply_nested_json_is_65_naming_the_file(tmp_path, capsys, name):
    bids = make_minimal_bids(tmp_path / "bids")
    path = bids / name
    path.write_text('{"Name": "x", "BIDSVersion": "1.10.0", "Extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _cli(bids, tmp_path, "--print-trials") == 65
    err = _err(capsys)
    assert str(path) in err and "nested too deeply" in err


# --- F10: singular voxel-to-world affine --------------------------------------------------------------------

def _patch_header(path: Path, patches: dict[int, bytes]) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    for offset, value in patches.items():
        raw[offset:offset + len(value)] = value
    path.write_bytes(gzip.compress(bytes(raw)))


QFORM, SFORM, PIXDIM_XYZ, SROW = 252, 254, 80, 280  # NIfTI-1 header offsets


@pytest.mark.parametrize("patches, needle", [
    ({QFORM: struct.pack("<h", 0), SFORM: struct.pack("<h", 1), SROW: bytes(48)}, "sform"),  # all-zero srow
    ({QFORM: struct.pack("<h", 1), SFORM: struct.pack("<h", 0), PIXDIM_XYZ: bytes(12)}, "voxel sizes are 0"),
], ids=["zero-sform", "zero-voxel-sizes"])
def test_bold_with_a_singular_affine_is_65_before_any_step(tmp_path, capsys, started, patches, needle):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    bold = _func(bids) / f"{RUN}_bold.nii.gz"
    _patch_header(bold, patches)
    assert _cli(bids, tmp_path, "--stop-after", "preproc") == 65
    err = _err(capsys)
    assert str(bold) in err and "voxel-to-world" in err and needle in err
    assert started == []


# --- F11: --dummy-scans against the run lengths -------------------------------------------------------------

def test_dummy_scans_leaving_too_few_volumes_is_64_before_any_step(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids", n_volumes=40)
    assert _cli(bids, tmp_path, "--stop-after", "glm", "--dummy-scans", "35") == 64
    err = _err(capsys)
    assert "--dummy-scans 35" in err and f"{RUN}_bold.nii.gz" in err and "40 volumes" in err
    assert started == []
    assert _cli(bids, tmp_path, "--stop-after", "glm", "--dummy-scans", "5") == 0 and started == [True]


# --- F12, F13, F18: the stimuli folder ----------------------------------------------------------------------

def test_stimulus_path_that_is_a_folder_is_65(tiny_dataset, tmp_path, capsys, started):
    bids = tmp_path / "bids"
    shutil.copytree(tiny_dataset, bids)
    events = sorted(_func(bids).glob("*task-perception*_events.tsv"))[0].read_text().splitlines()
    column = events[0].split("\t").index("stim_file")
    image = bids / "stimuli" / events[1].split("\t")[column]
    image.unlink()
    image.mkdir()
    assert _cli(bids, tmp_path) == 65
    err = _err(capsys)
    assert f"{image} is a folder, not an image file" in err and "letter case" not in err
    assert started == []


def test_empty_stimuli_table_is_65_about_the_table(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    table = bids / "stimuli" / "stimuli.tsv"
    table.parent.mkdir()
    table.write_text("")
    assert _cli(bids, tmp_path, "--print-trials") == 65
    err = _err(capsys)
    assert f"stimuli table {table} is empty" in err and "'stimulus' column" in err
    assert "Events file" not in err and "exclude this run" not in err


def test_stimuli_table_that_is_a_folder_is_a_warning(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    table = bids / "stimuli" / "stimuli.tsv"
    table.mkdir(parents=True)
    assert _cli(bids, tmp_path, "--print-trials") == 0
    err = _err(capsys)
    assert f"{table} is a folder, not a table" in err and "WARNING" in err


# --- F15: events without their BOLD -------------------------------------------------------------------------

def test_events_whose_bold_is_missing_are_named_in_a_warning(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    (_func(bids) / f"{RUN}_bold.nii.gz").unlink()
    assert _cli(bids, tmp_path, "--print-trials") == 0
    err = _err(capsys)
    assert "WARNING" in err and f"{RUN}_events.tsv" in err and "no BOLD run" in err
    assert "run-02_events.tsv" not in err.split("no BOLD run")[1].split("\n")[0]


def test_no_warning_about_events_when_every_bold_is_there(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    assert _cli(bids, tmp_path, "--print-trials") == 0
    assert "no BOLD run" not in _err(capsys)


# --- F16: filter file values --------------------------------------------------------------------------------

@pytest.mark.parametrize("entity, value", [("run", 1.5), ("run", 99999999999999999999999), ("run", -1),
                                           ("task", {"a": 1}), ("run", [1, {"b": 2}])])
def test_filter_value_that_is_no_label_is_64(tmp_path, capsys, entity, value):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {entity: value}}))
    assert _cli(bids, tmp_path, "--print-trials", "--bids-filter-file", str(filters)) == 64
    err = _err(capsys)
    assert str(filters) in err and repr(entity) in err and "unexpected failure" not in err


def test_filter_with_whole_numbers_still_selects(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [2], "task": "perception"}}))
    assert _cli(bids, tmp_path, "--print-trials", "--bids-filter-file", str(filters)) == 0
    assert "1 run(s)" in capsys.readouterr().out


# --- F18: a sidecar folder, a compressed events file --------------------------------------------------------

def test_sidecar_that_is_a_folder_is_named_as_a_folder(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    (bids / "task-perception_bold.json").unlink()  # the TR then comes from the run's sidecar only
    sidecar = _func(bids) / f"{RUN}_bold.json"
    sidecar.mkdir()
    assert _cli(bids, tmp_path, "--print-trials") == 65
    err = _err(capsys)
    assert f"{sidecar} is a folder, not a JSON sidecar" in err and "is missing" not in err


def test_gzip_compressed_events_file_is_65_saying_so(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    events = _func(bids) / f"{RUN}_events.tsv"
    events.write_bytes(gzip.compress(events.read_bytes()))
    assert _cli(bids, tmp_path, "--print-trials") == 65
    err = _err(capsys)
    assert str(events) in err and "binary or compressed file (gzip)" in err and "fields" not in err
