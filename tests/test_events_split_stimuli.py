"""Issue 17, points 4-6 and 9 on the real layouts: which trials train and test (the published designs), the
images decoding needs checked at startup (named, with the path expected), events-map sections checked against
the dataset's tasks, and ``--print-trials`` showing the rule while writing nothing.

Expected numbers come from the published designs and the datasets' READMEs (PROVENANCE.md): ds001506 trains on
15 NaturalImageTraining sessions (1,200 images x 5 = 6,000 trials) and tests on 3 NaturalImageTest sessions
(50 images x 24 = 1,200 trials); ds001246 trains on perceptionTraining (1,200 images once) and tests on
perceptionTest (50 images x 35 = 1,750 trials).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixture_datasets import fixtures_root, make_fixture_copy  # noqa: E402

from bids_m2i.bids.events import build_trials_table, events_to_trials, load_events_map  # noqa: E402
from bids_m2i.bids.stimuli import check_decoding_stimuli  # noqa: E402
from bids_m2i.cli.run import run_cli  # noqa: E402
from bids_m2i.decoding.splits import split_trials  # noqa: E402
from bids_m2i.errors import InputMissingError, UsageError  # noqa: E402

ROOT = fixtures_root()
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="real-bids fixtures not available")

#: one run of each kind of ds001506 session: enough for the stimulus check, small enough for seconds
DS001506_SESSIONS = ["perceptionNaturalImageTraining01", "perceptionNaturalImageTest01", "perceptionArtificialImage01",
                     "perceptionLetterImage01", "imagery01"]


def _event_files(dataset: str) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted((ROOT / dataset).glob("sub-*/**/func/*_events.tsv")):
        ents = dict(re.findall(r"(sub|ses|task|run)-([A-Za-z0-9]+)", path.name))
        out.append((path, {"session": ents.get("ses"), "task": ents["task"], "run": ents["run"]}))
    return out


def _raw_stimuli(dataset: str, session_prefix: str, code: str) -> list[str]:
    """stimulus_name of the rows whose event_type is ``code``, read with the csv module (independent of m2i)."""
    names = []
    for path, ents in _event_files(dataset):
        if (ents["session"] or "").startswith(session_prefix):
            with open(path, newline="") as fh:
                names += [row["stimulus_name"] for row in csv.DictReader(fh, delimiter="\t")
                          if row["event_type"] == code]
    return names


def _trial_rows(dataset: str):
    table = build_trials_table(_event_files(dataset))
    return table[table["role"] == "trial"].reset_index(drop=True)


@pytest.fixture(scope="module")
def ds001506_trials():
    return _trial_rows("ds001506")


# ----------------------------------------------------------------------------------------------------------
# point 5: the published train / test split


def test_ds001506_trains_on_natural_training_and_tests_on_natural_test(ds001506_trials):
    trials = ds001506_trials
    split = split_trials(trials, seed=0)
    train, test = trials.iloc[split.train], trials.iloc[split.test]
    assert len(train) == 6000 and set(train["session"].str.replace(r"\d+$", "", regex=True)) == {
        "perceptionNaturalImageTraining"}
    training_images = _raw_stimuli("ds001506", "perceptionNaturalImageTraining", "1")
    assert len(training_images) == 6000 and train["stimulus"].value_counts().to_dict() == {
        name: 5 for name in set(training_images)}  # 1,200 images x 5
    test_images = _raw_stimuli("ds001506", "perceptionNaturalImageTest", "1")
    assert len(test) == len(test_images) == 1200
    assert set(split.test_stimuli) == set(test["stimulus"]) == set(test_images) and len(set(test_images)) == 50
    # artificial shapes (800) and letters (120) get betas but are neither trained nor tested on
    shapes_letters = trials["session"].str.contains("ArtificialImage|LetterImage")
    assert shapes_letters.sum() == 920 and set(trials.loc[shapes_letters, "split"]) == {"none"}
    assert not (set(split.train) | set(split.test)) & set(trials.index[shapes_letters])
    assert len(split.imagery) == 520  # 20 runs x 26, evaluated as before
    assert split.rule.startswith("events rules' split")


def test_ds001246_trains_on_training_sessions_and_tests_on_test_sessions():
    trials = _trial_rows("ds001246")
    split = split_trials(trials, seed=0)
    train, test = trials.iloc[split.train], trials.iloc[split.test]
    assert len(train) == 1200 and train["stimulus"].is_unique
    assert set(train["session"].str.replace(r"\d+$", "", regex=True)) == {"perceptionTraining"}
    test_images = _raw_stimuli("ds001246", "perceptionTest", "stimulus")
    # each test run shows its 50 images once plus 5 one-back repeats, which are nuisance (no beta)
    assert len(test) == 1750 and set(test["stimulus"]) == set(test_images) and len(set(test_images)) == 50
    assert set(test["split"]) == {"test"} and set(train["split"]) == {"train"}
    assert len(split.imagery) == 500


def test_events_map_on_a_profile_can_test_on_shapes_and_letters(tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text('[task.perception]\nprofile = "ds001506"\n'
                       'test_sessions = ["perceptionNaturalImageTest*", "perceptionArtificialImage*", '
                       '"perceptionLetterImage*"]\n')
    table = build_trials_table(_event_files("ds001506"), events_map=load_events_map(mapping))
    trials = table[table["role"] == "trial"].reset_index(drop=True)
    runs = {r["rule"] for r in table.attrs["runs"] if r["task"] == "perception"}
    assert runs == {f"{mapping} [task.perception] on profile ds001506 [task.perception]"}
    split = split_trials(trials, seed=0)
    assert len(split.train) == 6000 and len(split.test) == 1200 + 920
    # everything else of the profile section still applies (codes, one-back repeats, file names)
    assert set(trials.loc[trials["task"] == "perception", "event_type"]) == {"1"}


def test_session_in_both_train_and_test_is_a_usage_error(tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text('[task.perception]\nprofile = "ds001506"\ntrain_sessions = ["perception*"]\n')
    path = next(p for p, e in _event_files("ds001506") if e["session"] == "perceptionNaturalImageTest01")
    with pytest.raises(UsageError, match="both train_sessions and test_sessions"):
        events_to_trials(path, task="perception", events_map=load_events_map(mapping))


# ----------------------------------------------------------------------------------------------------------
# point 4: the stimulus check, before any processing, naming what is expected where


def test_ds001506_image_file_names_follow_the_kind_of_stimulus(ds001506_trials, tmp_path):
    table = ds001506_trials
    first = table.groupby(table["session"].str.replace(r"\d+$", "", regex=True))["stim_file"].first().to_dict()
    assert first["perceptionNaturalImageTraining"] == "n01639765_47681.JPEG"
    assert first["perceptionNaturalImageTest"] == "n03954393_10038.JPEG"
    assert first["perceptionArtificialImage"] == "colorExpStim19_yellow_+.tiff"
    assert first["perceptionLetterImage"] == "letter_black_img028_R.tiff"
    assert first["imagery"] == "n/a"  # a category is imagined, not an image
    # a lab that converted an image to another format keeps its name: it is found under that extension
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    (stimuli / "n01639765_47681.png").write_bytes(b"png")
    path = next(p for p, e in _event_files("ds001506") if e["session"] == "perceptionNaturalImageTraining01")
    trials = events_to_trials(path, task="perception", stimuli_dir=stimuli)
    assert trials.loc[trials["stimulus"] == "n01639765_47681", "stim_file"].iloc[0] == "n01639765_47681.png"


@pytest.fixture(scope="module")
def ds001506_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds001506")
    bids = make_fixture_copy("ds001506", root / "bids", sessions=DS001506_SESSIONS)
    filters = root / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1]}}))
    return bids, filters, root


def test_ds001506_without_images_stops_at_startup_naming_the_expected_path(ds001506_copy, tmp_path, capsys):
    bids, filters, _ = ds001506_copy
    out, work = tmp_path / "out", tmp_path / "work"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--bids-filter-file", str(filters),
                    "-w", str(work), "--nprocs", "1"])
    err = capsys.readouterr().err
    assert code == 66, err
    # at start-up, not after the 17 minutes of preprocessing and GLM: proven below by the work dir and outputs
    # (no nipype node ran), not by a wall-clock limit that a busy CI machine can exceed
    assert "100 stimulus images that decoding needs" in err  # 50 training + 50 test images, no shape or letter
    # the first missing image (table order: the test session sorts first) with the exact path expected
    assert "n03954393_10038.JPEG" in err and f"e.g. {bids / 'stimuli' / 'n03954393_10038.JPEG'}" in err
    assert "colorExpStim" not in err and "letter_" not in err and "--stop-after glm" in err
    assert "Traceback" not in err
    # nothing was processed: no nipype node ran, no derivative beyond the dataset description
    assert not list(work.rglob("*.pklz")) and not list(out.rglob("*_bold.nii.gz"))


def test_ds001506_with_placeholder_images_passes_the_check(ds001506_copy, tmp_path):
    from PIL import Image

    from bids_m2i.bids.inputs import collect_inputs
    from bids_m2i.config import build_config

    bids, filters, _ = ds001506_copy
    stimuli = bids / "stimuli"
    stimuli.mkdir(exist_ok=True)
    config = build_config(bids, tmp_path / "out", "participant",
                          {"bids_filter_file": filters, "skip_bids_validation": True},
                          {"bids_filter_file", "skip_bids_validation"})
    with pytest.raises(InputMissingError) as missing:
        collect_inputs(config, tmp_path / "work")
    expected = re.findall(r"e\.g\. (\S+\.JPEG)", str(missing.value.hint))
    assert expected and Path(expected[0]).parent == stimuli
    for session in ("perceptionNaturalImageTraining01", "perceptionNaturalImageTest01"):
        for name in _raw_stimuli_of(bids, session):
            Image.new("RGB", (4, 4), (200, 100, 50)).save(stimuli / f"{name}.JPEG", format="JPEG")
    inputs = collect_inputs(config, tmp_path / "work")  # the check passes: no shape or letter image needed
    trials = inputs["01"].trials
    assert (trials.loc[trials["split"].isin(["train", "test"]), "stim_file"].str.endswith(".JPEG")).all()
    (stimuli / expected[0].rsplit("/", 1)[-1]).write_text("not an image")
    with pytest.raises(Exception, match="cannot be read"):
        collect_inputs(config, tmp_path / "work")


def _raw_stimuli_of(bids: Path, session: str) -> set[str]:
    path = next((bids / "sub-01" / f"ses-{session}" / "func").glob("*_run-01_events.tsv"))
    with open(path, newline="") as fh:
        return {row["stimulus_name"] for row in csv.DictReader(fh, delimiter="\t") if row["event_type"] in ("1", "2")}


def test_auto_detected_events_without_file_names_are_named_at_startup():
    import pandas as pd

    events = pd.DataFrame({"onset": ["0", "10", "20"], "duration": ["3", "3", "3"],
                           "trial_type": ["show", "show", "show"], "ImgName": ["a", "b", "c"]})
    trials = events_to_trials(events, task="look", session="01", run="1")
    trials.attrs["runs"] = [{"task": "look", "session": "01", "run": "1", "rule": "auto-detection"}]
    with pytest.raises(InputMissingError) as error:
        check_decoding_stimuli(trials, Path("/nonexistent/stimuli"), trials.attrs["runs"])
    assert "3 trial(s)" in str(error.value) and "auto-detection" in str(error.value)
    assert "stim_file_template" in str(error.value.hint)


# ----------------------------------------------------------------------------------------------------------
# point 6: a misspelled events-map section; --print-trials' rule column


@pytest.mark.parametrize("section, guess", [("Perception", "[task.Perception] -> [task.perception]"),
                                            ("perceptoin", "[task.perceptoin] -> [task.perception]"),
                                            ("rest", None)])
def test_events_map_section_for_no_task_of_the_dataset_is_64(ds001506_copy, tmp_path, capsys, section, guess):
    bids, filters, _ = ds001506_copy
    mapping = tmp_path / "map.toml"
    mapping.write_text(f'[task.{section}]\nrole_column = "event_type"\ntrial = ["1"]\n')
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", "--print-trials",
                    "--bids-filter-file", str(filters), "--events-map", str(mapping)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"[task.{section}]" in err and "imagery, perception" in err
    assert (guess in err) if guess else "did you mean" not in err


def test_print_trials_shows_rule_and_split_and_writes_nothing(ds001506_copy, tmp_path, capsys):
    bids, filters, _ = ds001506_copy
    blocker = tmp_path / "a-file"  # nothing can be created below a file, not even by root
    blocker.write_text("")
    out, work = blocker / "out", blocker / "work"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--print-trials",
                    "--bids-filter-file", str(filters), "-w", str(work)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith(("perception ", "imagery "))]
    assert len(lines) == 5
    for line in lines:
        task = line.split()[0]
        assert line.endswith(f"profile ds001506 [task.{task}]")
    natural = next(line for line in lines if "NaturalImageTraining01" in line)
    assert "train 50" in natural
    assert "not decoded 40" in next(line for line in lines if "ArtificialImage01" in line)
    assert "train 50, test 50, not decoded 50" in captured.out  # 40 shapes + 10 letters in the first runs
    assert blocker.is_file() and not (bids / "derivatives").exists()


def test_print_trials_on_a_missing_output_dir_creates_nothing(ds001506_copy, tmp_path, capsys):
    bids, filters, _ = ds001506_copy
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", "--print-trials",
                    "--bids-filter-file", str(filters), "-w", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_only_test_sessions_selected_says_to_select_training_sessions():
    from bids_m2i.errors import BadDataError

    files = [(p, e) for p, e in _event_files("ds001246") if e["session"] in ("perceptionTest01", "imageryTest01")]
    table = build_trials_table(files)
    with pytest.raises(BadDataError, match="nothing left to train on") as error:
        split_trials(table[table["role"] == "trial"].reset_index(drop=True))
    assert "train_sessions" in str(error.value.hint)
