"""Events → trials on the real-layout fixtures (PROVENANCE.md): counts per run and every wart survived.

Expected numbers come from the published designs (PROVENANCE.md table, the datasets' READMEs); where a
count varies by run it is recomputed here from the raw file with the csv module, independently of
``bids_m2i.bids.events``.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixture_datasets import fixtures_root, inherited_sidecar, last_event_end, make_fixture_copy  # noqa: E402

from bids_m2i.bids.events import (  # noqa: E402
    build_trials_table,
    events_to_trials,
    load_events_map,
    read_events,
    summarize_trials,
)
from bids_m2i.bids.stimuli import missing_stimulus_files, resolve_stimulus_path  # noqa: E402

ROOT = fixtures_root()
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="real-bids fixtures not available")


def _event_files(dataset: str) -> list[tuple[Path, dict]]:
    files = sorted((ROOT / dataset).glob("sub-*/**/func/*_events.tsv"))
    out = []
    for path in files:
        ents = dict(re.findall(r"(sub|ses|task|run)-([A-Za-z0-9]+)", path.name))
        out.append((path, {"subject": ents["sub"], "session": ents.get("ses"), "task": ents["task"], "run": ents["run"]}))
    return out


def _raw_rows(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def _per_run(table):
    for (session, run), part in table.groupby(["session", "run"], sort=False):
        yield session, run, part


@pytest.fixture(scope="module")
def ds001246():
    return build_trials_table(_event_files("ds001246"), include_ignore=True)


@pytest.fixture(scope="module")
def ds001506():
    return build_trials_table(_event_files("ds001506"), include_ignore=True)


def test_ds001246_perception_runs(ds001246):
    runs = [r for r in ds001246.attrs["runs"] if r["task"] == "perception"]
    assert len(runs) == 59
    assert {r["rule"] for r in runs} == {"profile ds001246 [task.perception]"}
    perception = ds001246[ds001246["task"] == "perception"]
    for session, run, part in _per_run(perception):
        trials = part[part["role"] == "trial"]
        oneback = part[part["role"] == "nuisance"]
        assert len(trials) == 50, (session, run)
        assert trials["stimulus"].is_unique  # each image once per run
        assert len(oneback) == 5 and set(oneback["event_type"]) == {"oneback"}
        assert set(part.loc[part["role"] == "ignore", "event_type"]) == {"rest"}
        # every one-back repeat shows the image of the stimulus block just before it
        stim_rows = part[part["event_type"].isin(["stimulus", "oneback"])].reset_index(drop=True)
        for i in stim_rows.index[stim_rows["event_type"] == "oneback"]:
            assert stim_rows.loc[i, "stimulus"] == stim_rows.loc[i - 1, "stimulus"]
        assert set(trials["condition"]) == {"perception"} and set(trials["cue"]) == {"none"}
        # category = WordNet synset of the ImageNet file name; stim_file = that file (under stimuli/)
        first = trials.iloc[0]
        assert first["category"] == first["stimulus"].split("_")[0]
        assert first["stim_file"] == first["stimulus"] + ".JPEG"


def test_ds001246_imagery_runs(ds001246):
    imagery = ds001246[ds001246["task"] == "imagery"]
    assert imagery["run"].nunique() == 8 and len(list(_per_run(imagery))) == 20
    for session, run, part in _per_run(imagery):
        trials = part[part["role"] == "trial"]
        assert len(trials) == 25, (session, run)
        assert set(trials["event_type"]) == {"imagery"}
        assert set(trials["condition"]) == {"imagery"} and set(trials["cue"]) == {"text"}
        assert set(trials["stim_file"]) == {"n/a"}  # a category is imagined, not an image
        assert (trials["stimulus"] == trials["category"]).all()
        assert trials["stimulus"].str.match(r"^n\d{8}$").all()
        nuisance = part[part["role"] == "nuisance"]
        assert nuisance["event_type"].value_counts().to_dict() == {"cue": 25, "evaluation": 25}
        assert set(part.loc[part["role"] == "ignore", "event_type"]) == {"inter_rest", "rest"}


def test_ds001506_counts_per_run(ds001506):
    assert {r["rule"] for r in ds001506.attrs["runs"]} == {
        "profile ds001506 [task.perception]",
        "profile ds001506 [task.imagery]",
    }
    sources = {(r["session"], r["run"]): Path(r["source"]) for r in ds001506.attrs["runs"]}
    for session, run, part in _per_run(ds001506):
        raw = _raw_rows(sources[(session, run)])
        codes = [r["event_type"] for r in raw]
        trials = part[part["role"] == "trial"]
        nuisance = part[part["role"] == "nuisance"]
        if session.startswith("imagery"):
            assert len(trials) == 26, (session, run)
            assert nuisance["event_type"].value_counts().to_dict() == {"1": 26, "3": 26}
            assert set(trials["cue"]) == {"text"} and set(trials["stim_file"]) == {"n/a"}
            assert set(trials["condition"]) == {"imagery"}
        else:
            # 1 = stimulus block, 2 = one-back repetition block (README of ds001506)
            assert len(trials) == codes.count("1") and len(nuisance) == codes.count("2")
            assert set(nuisance["event_type"]) <= {"2"}
            assert set(trials["condition"]) == {"perception"}
            assert trials["stimulus"].is_unique
            if session.startswith("perceptionNaturalImage"):
                assert len(trials) == 50, (session, run)
        # nothing but the listed codes becomes a trial or nuisance
        assert len(part) == len(raw)


def test_ds001506_same_code_means_different_things(ds001506):
    code_1 = ds001506[ds001506["event_type"] == "1"]
    assert set(code_1.loc[code_1["task"] == "perception", "role"]) == {"trial"}
    assert set(code_1.loc[code_1["task"] == "imagery", "role"]) == {"nuisance"}


def test_ds001506_wart_on_a_typo(caplog):
    path = next(
        p for p, _ in _event_files("ds001506") if "LetterImage01" in p.name and "run-01" in p.name
    )
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        events = read_events(path)
    assert "on/a" in caplog.text and "stimulus_id" in caplog.text
    assert "on/a" not in set(events["stimulus_id"])
    trials = events_to_trials(events, task="perception", source=path, include_ignore=True)
    assert (trials["role"] == "trial").sum() == 10
    assert len(trials) == len(events)


def test_wart_stimulus_ids_keep_their_zeros():
    path = next(p for p, _ in _event_files("ds001506") if "NaturalImageTraining06" in p.name and "run-04" in p.name)
    events = read_events(path)
    assert "3079230.008270" in set(events["stimulus_id"])
    trials = events_to_trials(events, task="perception", source=path)
    assert "n03079230_8270" in set(trials["stimulus"])


def test_wart_string_ids_with_a_map(tmp_path):
    path = next(p for p, _ in _event_files("ds001506") if "NaturalImageTraining06" in p.name and "run-04" in p.name)
    mapping = tmp_path / "map.toml"
    mapping.write_text(
        '[task.perception]\nrole_column = "event_type"\ntrial = [1]\nnuisance = [2]\nstimulus_column = "stimulus_id"\n'
    )
    trials = events_to_trials(path, task="perception", events_map=load_events_map(mapping))
    assert "3079230.008270" in set(trials["stimulus"])
    assert trials.attrs["rule"].endswith("[task.perception]") and str(mapping) in trials.attrs["rule"]
    assert (trials["role"] == "trial").sum() == 50


def test_ds000117_null_events_ignored():
    files = _event_files("ds000117")
    table = build_trials_table(files, include_ignore=True)
    run1 = table[table["run"] == "01"]
    trials = run1[run1["role"] == "trial"]
    assert len(trials) == 93
    assert set(trials["category"]) == {"FAMOUS", "UNFAMILIAR", "SCRAMBLED"}
    ignored = run1[run1["role"] == "ignore"]
    assert "func/Circle.bmp" in set(ignored["stim_file"]) and "func/i999.bmp" in set(ignored["stim_file"])
    assert not trials["stim_file"].isin(["func/Circle.bmp", "func/i999.bmp"]).any()
    for path, ents in files:  # every run: trials = rows with a stim_type
        raw = _raw_rows(path)
        part = table[(table["run"] == ents["run"]) & (table["role"] == "trial")]
        assert len(part) == sum(r["stim_type"] != "n/a" for r in raw)
    # stimulus identity = file stem; the immediate repeats of a face share it
    assert trials["stimulus"].iloc[0] == "f013" and (trials["stimulus"] == "f013").sum() == 2


def test_ds000117_stimulus_lookup_bare_name(tmp_path):
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    (stimuli / "f013.bmp").write_bytes(b"BM")
    path = _event_files("ds000117")[0][0]
    trials = events_to_trials(path, task="facerecognition", stimuli_dir=stimuli)
    assert trials["stim_file"].iloc[0] == "f013.bmp"  # found by its bare name
    assert trials["stim_file"].iloc[2] == "func/u014.bmp"  # not found: kept as BIDS-relative path
    assert resolve_stimulus_path(stimuli, "func/u014.bmp", path) is None
    assert missing_stimulus_files(trials, stimuli)[0] == "func/u014.bmp"


def test_ds001499_crlf_and_columns_with_parentheses(caplog, tmp_path):
    files = _event_files("ds001499")
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        table = build_trials_table(files)
    assert "CRLF" in caplog.text
    for _, run, part in _per_run(table):
        assert (part["role"] == "trial").sum() == 37, run
    run1 = table[table["run"] == "01"]
    assert run1["stim_file"].iloc[0] == "n01930112_19568.JPEG"  # bare file name, no folder
    assert run1["stimulus"].iloc[0] == "n01930112_19568"
    assert not run1["stim_file"].str.contains("\r").any()
    # StimOn(s)/StimOff(s) usable as timing columns through a map
    mapping = tmp_path / "map.toml"
    mapping.write_text('[task.5000scenes]\nonset_column = "StimOn(s)"\noffset_column = "StimOff(s)"\nstimulus_column = "ImgName"\n')
    alt = events_to_trials(files[0][0], task="5000scenes", events_map=load_events_map(mapping))
    assert len(alt) == 37
    assert alt["onset"].to_numpy() == pytest.approx(run1["onset"].to_numpy(), abs=1e-9)
    assert alt["duration"].to_numpy() == pytest.approx(run1["duration"].to_numpy(), abs=1e-3)


def test_print_trials_summary_on_fixture(ds001246):
    text = summarize_trials(ds001246)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["task", "session", "run", "trials", "nuisance", "ignore"]
    row = next(line for line in lines if line.startswith("perception") and "perceptionTest01" in line)
    assert row.split()[3:6] == ["50", "5", "2"] and "oneback 5" in row
    total = next(line for line in lines if line.startswith("total:"))
    assert "total: 3450 trials" in total  # 59 runs x 50 + 20 runs x 25


def test_no_stimulus_images_are_reported_missing():
    path = next(p for p, ents in _event_files("ds001246") if ents["task"] == "perception")
    stimuli = ROOT / "ds001246" / "stimuli"  # absent in the fixture
    trials = events_to_trials(path, task="perception", stimuli_dir=stimuli)
    missing = missing_stimulus_files(trials, stimuli)
    assert len(missing) == 50 and missing[0].endswith(".JPEG")


# ----------------------------------------------------------------------------------------------------
# make_fixture_copy
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, sessions, tr",
    [("ds001246", ["perceptionTest01", "imageryTest01"], 3.0), ("ds001506", ["imagery01"], 2.0),
     ("ds000117", None, 2.0), ("ds001499", None, 2.0)],
)
def test_make_fixture_copy_lengths_and_tr(tmp_path, name, sessions, tr):
    import nibabel as nib

    dest = make_fixture_copy(name, tmp_path / name, sessions=sessions)
    events = sorted(dest.rglob("func/*_events.tsv"))
    assert events
    if sessions:
        assert {p.parent.parent.name for p in events} == {f"ses-{s}" for s in sessions}
    for path in events:
        bold = path.with_name(path.name.replace("_events.tsv", "_bold.nii.gz"))
        img = nib.load(bold)
        assert img.shape[:3] == (8, 8, 4)
        assert float(img.header.get_zooms()[3]) == tr
        assert inherited_sidecar(bold, dest)["RepetitionTime"] == tr
        length = img.shape[3] * tr
        end = last_event_end(path)
        assert end + 10.0 <= length < end + 10.0 + tr
    sizes = [p.stat().st_size for p in dest.rglob("*_bold.nii.gz")]
    assert max(sizes) < 100_000


def test_make_fixture_copy_is_deterministic_and_leaves_source(tmp_path):
    a = make_fixture_copy("ds000117", tmp_path / "a", n_volumes=12, seed=3)
    b = make_fixture_copy("ds000117", tmp_path / "b", n_volumes=12, seed=3)
    name = "sub-01/ses-mri/func/sub-01_ses-mri_task-facerecognition_run-01_bold.nii.gz"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert not list((ROOT / "ds000117").rglob("*.nii.gz"))
    with pytest.raises(FileExistsError):
        make_fixture_copy("ds000117", a)
