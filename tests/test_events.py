"""Unit tests of events → trials: auto-detection, maps vs profiles, typos, CRLF, ids, paths, errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from bids_m2i.bids.events import (
    TRIALS_COLUMNS,
    build_trials_table,
    builtin_profiles,
    check_events_within_run,
    events_to_trials,
    load_events_map,
    read_events,
    summarize_trials,
)
from bids_m2i.bids.stimuli import normalize_stim_file, resolve_stimulus_path
from bids_m2i.errors import BadDataError, InputMissingError, UsageError


def write_tsv(path: Path, header: list[str], rows: list[list[object]], newline: str = "\n") -> Path:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def write_map(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def test_values_are_strings_and_typos_become_na(tmp_path, caplog):
    path = write_tsv(
        tmp_path / "sub-01_task-x_run-1_events.tsv",
        ["onset", "duration", "stimulus_id", "cue"],
        [[0, 1, "3079230.008270", "none"], [2, 1, "N/A", "text"], [4, 1, "nan", "none"], [6, 1, "", "image"],
         [8, 1, "on/a", "none"], [10, 1, "0012", "none"]],
    )
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        events = read_events(path)
    assert list(events["stimulus_id"]) == ["3079230.008270", "n/a", "n/a", "n/a", "n/a", "0012"]
    assert list(events["cue"]) == ["none", "text", "none", "image", "none", "none"]  # 'none' is a value
    assert list(events["onset"]) == ["0", "2", "4", "6", "8", "10"]
    assert "stimulus_id" in caplog.text and "'on/a'" in caplog.text and "line 3" in caplog.text


def test_crlf_is_read_with_a_warning(tmp_path, caplog):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"], [[0, 1, "a.png"], [3, 1, "b.png"]], "\r\n")
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        events = read_events(path)
    assert list(events.columns) == ["onset", "duration", "stim_file"]
    assert list(events["stim_file"]) == ["a.png", "b.png"]
    assert "CRLF" in caplog.text


def test_empty_and_header_only_files_are_bad_data(tmp_path):
    empty = tmp_path / "empty_events.tsv"
    empty.write_text("")
    with pytest.raises(BadDataError) as err:
        read_events(empty)
    assert err.value.exit_code == 65 and "empty" in str(err.value) and str(empty) in str(err.value)
    header_only = write_tsv(tmp_path / "h_events.tsv", ["onset", "duration", "stim_file"], [])
    with pytest.raises(BadDataError, match="no events"):
        events_to_trials(header_only, task="x")
    with pytest.raises(InputMissingError):
        read_events(tmp_path / "absent_events.tsv")


def test_not_tab_separated_and_ragged_rows(tmp_path):
    csv_file = tmp_path / "c_events.tsv"
    csv_file.write_text("onset,duration,stim_file\n0,1,a.png\n")
    with pytest.raises(BadDataError, match="not tab separated"):
        read_events(csv_file)
    ragged = tmp_path / "r_events.tsv"
    ragged.write_text("onset\tduration\n0\t1\t7\t9\n")
    with pytest.raises(BadDataError):
        read_events(ragged)


# ----------------------------------------------------------------------------------------------------
# auto-detection
# ----------------------------------------------------------------------------------------------------
def test_auto_detection_stimulus_column_order_and_na_rows(tmp_path):
    path = write_tsv(
        tmp_path / "sub-01_task-viewing_run-02_events.tsv",
        ["onset", "duration", "stimulus_name", "stim_file", "ImgName"],
        [[0, 10, "n/a", "n/a", "n/a"], [10, 2, "cat", "pics/cat_01.png", "x"], [14, 2, "dog", "dog.jpg", "y"]],
    )
    trials = events_to_trials(path, task="viewing", include_ignore=True)
    assert list(trials.columns) == list(TRIALS_COLUMNS)
    assert list(trials["role"]) == ["ignore", "trial", "trial"]
    # stim_file wins over stimulus_name; an identity taken from a path is the file stem
    assert list(trials["stimulus"]) == ["n/a", "cat_01", "dog"]
    assert list(trials["stim_file"]) == ["n/a", "pics/cat_01.png", "dog.jpg"]
    assert set(trials["condition"]) == {"perception"} and set(trials["cue"]) == {"none"}
    assert trials.attrs["rule"] == "auto-detection"
    assert list(trials["run"]) == ["02"] * 3 and list(trials["session"]) == ["n/a"] * 3
    assert trials["onset"].dtype == float and trials["duration"].dtype == float


@pytest.mark.parametrize(
    "task, session, trial_type, expected",
    [
        ("viewing", None, "picture", "perception"),
        ("Imagine", None, "picture", "imagery"),
        ("viewing", "imagery02", "picture", "imagery"),
        ("viewing", None, "imagined_scene", "imagery"),
        # "image" is the word for plain viewing, not imagery (it contains "imag")
        ("viewing", None, "image", "perception"),
        ("passiveimages", None, "natural_images", "perception"),
        ("viewing", None, "imageryTrial", "imagery"),
        ("imag", None, "picture", "imagery"),
    ],
)
def test_auto_detection_condition(tmp_path, task, session, trial_type, expected):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "trial_type"], [[0, 4, trial_type]])
    trials = events_to_trials(path, task=task, session=session)
    assert list(trials["condition"]) == [expected]
    assert list(trials["role"]) == ["trial"]


def test_auto_detection_words_of_the_event_type(tmp_path):
    path = write_tsv(
        tmp_path / "e_events.tsv",
        ["onset", "duration", "trial_type", "stimulus_name"],
        [[0, 10, "rest", "n/a"], [10, 1, "cue", "cat"], [11, 4, "imagery", "cat"], [15, 1, "response", "cat"],
         [16, 3, "inter_rest", "cat"], [19, 4, "imagery", "n/a"]],
    )
    trials = events_to_trials(path, task="imag", include_ignore=True)
    assert list(trials["role"]) == ["ignore", "nuisance", "trial", "nuisance", "ignore", "ignore"]
    assert list(trials["event_type"])[:4] == ["rest", "cue", "imagery", "response"]


def test_pure_imagination_trial_from_text_only(tmp_path):
    path = write_tsv(
        tmp_path / "e_events.tsv",
        ["onset", "duration", "trial_type", "stim_file", "stimulus_name", "cue_text"],
        [[0, 4, "imagery", "n/a", "nov-0007", "a red boat on a lake"], [6, 4, "imagery", "img-1.png", "img-1", "n/a"]],
    )
    trials = events_to_trials(path, task="imagery")
    first, second = trials.iloc[0], trials.iloc[1]
    assert first["role"] == "trial" and first["stim_file"] == "n/a" and first["cue_text"] == "a red boat on a lake"
    assert first["cue"] == "text" and first["condition"] == "imagery"
    assert second["stim_file"] == "img-1.png" and second["cue_text"] == "n/a"


def test_auto_detection_cue_column_with_words_is_cue_text(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "trial_type", "cue"],
                     [[0, 4, "imagery", "a red boat"], [5, 4, "imagery", "a cat"]])
    trials = events_to_trials(path, task="imagery")
    assert list(trials["cue_text"]) == ["a red boat", "a cat"] and set(trials["cue"]) == {"text"}
    assert set(trials["role"]) == {"trial"} and set(trials["stim_file"]) == {"n/a"}


# ----------------------------------------------------------------------------------------------------
# maps and profiles
# ----------------------------------------------------------------------------------------------------
NUMERIC = [[0, 32, -1, "n/a"], [32, 4, 1, "n01"], [36, 8, 2, "n01"], [44, 3, 3, "n01"], [47, 1, 4, "n01"]]


def test_builtin_profiles_are_loaded_in_name_order():
    names = [p.name for p in builtin_profiles()]
    assert names == sorted(names)
    assert {"ds000117", "ds001246", "ds001499", "ds001506", "m2i"} <= set(names)


def test_same_code_means_different_things_per_task(tmp_path):
    imagery = write_tsv(tmp_path / "sub-01_task-imagery_run-01_events.tsv",
                        ["onset", "duration", "event_type", "category_name"], NUMERIC)
    trials = events_to_trials(imagery, task="imagery", include_ignore=True)
    assert trials.attrs["rule"] == "profile ds001506 [task.imagery]"
    assert list(trials["role"]) == ["ignore", "nuisance", "trial", "nuisance", "ignore"]
    # under another task name no profile applies: auto-detection, every identified row is a trial
    other = events_to_trials(imagery, task="dreams", include_ignore=True)
    assert other.attrs["rule"] == "auto-detection"
    assert list(other["role"]) == ["ignore", "trial", "trial", "trial", "trial"]


def test_profile_does_not_apply_to_unlisted_codes(tmp_path):
    rows = NUMERIC + [[48, 2, 9, "n02"]]  # code 9 is not in the ds001506 imagery profile
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "event_type", "category_name"], rows)
    trials = events_to_trials(path, task="imagery")
    assert trials.attrs["rule"] == "auto-detection"


def test_events_map_overrides_profiles_for_the_tasks_it_names(tmp_path, caplog):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "event_type", "category_name"], NUMERIC)
    mapping = load_events_map(write_map(tmp_path / "map.toml", """
[task.imagery]
role_column = "event_type"
trial = [1, 2]          # numbers allowed; 1 compares equal to "1" and "1.0"
nuisance = ["3"]
ignore = ["4"]
condition = "imagery"
cue = "image"
stimulus_column = "category_name"
"""))
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        trials = events_to_trials(path, task="imagery", events_map=mapping, include_ignore=True)
    assert "map.toml [task.imagery]" in trials.attrs["rule"]
    assert list(trials["role"]) == ["ignore", "trial", "trial", "nuisance", "ignore"]
    assert set(trials["cue"]) == {"image"}
    assert "'-1'" in caplog.text  # -1 is not listed anywhere: ignored with a warning
    # a task the map does not name still uses the profile
    perception = write_tsv(tmp_path / "p_events.tsv", ["onset", "duration", "event_type", "stimulus_name", "stimulus_id"],
                           [[0, 8, "1.0", "n01_1", "1.000001"], [8, 8, "2", "n01_1", "1.000001"], [16, 8, "-2", "n/a", "n/a"]])
    other = events_to_trials(perception, task="perception", events_map=mapping, include_ignore=True)
    assert other.attrs["rule"] == "profile ds001506 [task.perception]"
    assert list(other["role"]) == ["trial", "nuisance", "ignore"]


def test_events_map_star_section_and_missing_columns(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "kind", "pic"],
                     [[0, 2, "show", "a"], [2, 2, "probe", "a"], [4, 2, "blank", "n/a"]])
    mapping = load_events_map(write_map(tmp_path / "map.toml", """
[task."*"]
role_column = "kind"
trial = ["show"]
nuisance = ["probe"]
stimulus_column = "pic"
"""))
    trials = events_to_trials(path, task="anything", events_map=mapping)
    assert list(trials["role"]) == ["trial", "nuisance"]
    wrong = load_events_map(write_map(tmp_path / "wrong.toml", '[task."*"]\nstimulus_column = "picture"\n'))
    with pytest.raises(BadDataError, match="picture"):
        events_to_trials(path, task="anything", events_map=wrong)


@pytest.mark.parametrize(
    "text, match",
    [
        ('[task.x]\nrole_colum = "a"\n', "unknown key"),
        ('[task.x]\ncondition = "dream"\n', "condition"),
        ('[task.x]\ntrial = ["a"]\n', "role_column"),
        ('[task.x]\nrole_column = "a"\ntrial = ["1"]\nnuisance = [1]\n', "more than one"),
        ('oops = 1\n[task.x]\n', "top-level"),
        ("[task.x\n", "not valid TOML"),
        ("description = 'nothing'\n", "no \\[task"),
    ],
)
def test_events_map_errors_are_usage_errors(tmp_path, text, match):
    path = write_map(tmp_path / "map.toml", text)
    with pytest.raises(UsageError, match=match) as err:
        load_events_map(path)
    assert err.value.exit_code == 64 and str(path) in str(err.value)


def test_missing_events_map_is_input_missing(tmp_path):
    with pytest.raises(InputMissingError):
        load_events_map(tmp_path / "nope.toml")


def test_oneback_rule_and_onset_duration_columns(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["t_on", "t_off", "what", "img"],
                     [[0, 2, "pic", "a"], [2, 4, "pic", "a"], [4, 6, "pic", "b"], [6, 8, "gap", "n/a"],
                      [8, 10, "pic", "b"], [10, 12, "pic", "a"]])
    mapping = load_events_map(write_map(tmp_path / "m.toml", """
[task.see]
role_column = "what"
trial = ["pic"]
onset_column = "t_on"
offset_column = "t_off"
oneback_column = "img"
stimulus_column = "img"
"""))
    trials = events_to_trials(path, task="see", events_map=mapping)
    # the row after a "gap" row still compares with the previous picture (b == b)
    assert list(trials["role"]) == ["trial", "nuisance", "trial", "nuisance", "trial"]
    assert list(trials["event_type"]) == ["pic", "oneback", "pic", "oneback", "pic"]
    assert list(trials["duration"]) == [2.0] * 5


# ----------------------------------------------------------------------------------------------------
# native format
# ----------------------------------------------------------------------------------------------------
def test_native_m2i_format(tmp_path):
    header = ["onset", "duration", "trial_type", "stimulus", "stim_file", "cue", "cue_text", "category"]
    rows = [
        [0, 6, "rest", "n/a", "n/a", "n/a", "n/a", "n/a"],
        [6, 3, "stimulus", "img-0042", "stimuli/img-0042.png", "none", "n/a", "animal"],
        [10, 1, "oneback", "img-0042", "stimuli/img-0042.png", "none", "n/a", "animal"],
        [12, 2, "cue", "img-0042", "stimuli/img-0042.png", "image", "n/a", "animal"],
        [14, 4, "imagery", "img-0042", "stimuli/img-0042.png", "image", "n/a", "animal"],
        [20, 2, "cue", "nov-0007", "n/a", "text", "a blue teapot", "object"],
        [22, 4, "imagery", "nov-0007", "n/a", "text", "a blue teapot", "object"],
        [27, 1, "response", "n/a", "n/a", "none", "n/a", "n/a"],
    ]
    path = write_tsv(tmp_path / "sub-01_ses-1_task-mixed_run-1_events.tsv", header, rows)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    (stimuli / "img-0042.png").write_bytes(b"png")
    trials = events_to_trials(path, task="mixed", stimuli_dir=stimuli)
    assert trials.attrs["rule"] == "profile m2i [task.*]"
    assert list(trials["role"]) == ["trial", "nuisance", "nuisance", "trial", "nuisance", "trial", "nuisance"]
    t = trials[trials["role"] == "trial"].reset_index(drop=True)
    assert list(t["condition"]) == ["perception", "imagery", "imagery"]
    assert list(t["cue"]) == ["none", "image", "text"]
    assert list(t["stim_file"]) == ["img-0042.png", "img-0042.png", "n/a"]  # relative to stimuli/
    assert list(t["cue_text"]) == ["n/a", "n/a", "a blue teapot"]
    assert list(t["category"]) == ["animal", "animal", "object"]
    assert list(trials["session"].unique()) == ["1"]


def test_native_bad_cue_value(tmp_path):
    header = ["onset", "duration", "trial_type", "stimulus", "stim_file", "cue", "cue_text", "category"]
    path = write_tsv(tmp_path / "e_events.tsv", header, [[0, 2, "imagery", "x", "n/a", "word", "hi", "n/a"]])
    with pytest.raises(BadDataError, match="cue must be image, text or none"):
        events_to_trials(path, task="t")


# ----------------------------------------------------------------------------------------------------
# stimuli paths and table
# ----------------------------------------------------------------------------------------------------
def test_stimulus_path_confinement(tmp_path):
    stimuli = tmp_path / "ds" / "stimuli"
    (stimuli / "func").mkdir(parents=True)
    (stimuli / "a.png").write_bytes(b"x")
    (stimuli / "func" / "b.bmp").write_bytes(b"x")
    (tmp_path / "ds" / "secret.png").write_bytes(b"x")
    events = tmp_path / "ds" / "e_events.tsv"
    assert resolve_stimulus_path(stimuli, "a.png", events) == stimuli / "a.png"
    assert resolve_stimulus_path(stimuli, "stimuli/a.png", events) == stimuli / "a.png"
    assert resolve_stimulus_path(stimuli, "func/b.bmp", events) == stimuli / "func" / "b.bmp"
    assert resolve_stimulus_path(stimuli, "other/a.png", events) == stimuli / "a.png"  # bare name
    assert resolve_stimulus_path(stimuli, "missing.png", events) is None
    assert resolve_stimulus_path(stimuli, "n/a", events) is None
    for bad in ("../secret.png", "func/../../secret.png", str(tmp_path / "ds" / "secret.png"), "C:\\x.png"):
        with pytest.raises(BadDataError) as err:
            resolve_stimulus_path(stimuli, bad, events)
        assert err.value.exit_code == 65 and str(events) in str(err.value)
    assert normalize_stim_file("./stimuli\\sub\\c.png") == "sub/c.png"


def test_symlinked_stimuli_are_allowed(tmp_path):
    # DataLad/git-annex datasets keep images as links into .git/annex: a link is not an escape
    annex = tmp_path / "ds" / ".git" / "annex"
    annex.mkdir(parents=True)
    (annex / "blob").write_bytes(b"x")
    stimuli = tmp_path / "ds" / "stimuli"
    stimuli.mkdir()
    os.symlink(annex / "blob", stimuli / "a.png")
    assert resolve_stimulus_path(stimuli, "a.png") == stimuli / "a.png"


def test_escaping_stim_file_in_events_is_bad_data(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"], [[0, 1, "../../etc/passwd"]])
    with pytest.raises(BadDataError, match="outside"):
        events_to_trials(path, task="x")


def test_categories_from_stimuli_table(tmp_path):
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    write_tsv(stimuli / "stimuli.tsv", ["stimulus", "category", "cue_text"],
              [["n02690373", "airliner", "airliner"], ["img-1", "animal", "n/a"]])
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "trial_type", "category_name"],
                     [[0, 4, "imagery", "n02690373"], [5, 4, "imagery", "zzz"]])
    trials = events_to_trials(path, task="imagery", stimuli_dir=stimuli)
    assert list(trials["category"]) == ["airliner", "n/a"]
    assert list(trials["cue_text"]) == ["airliner", "n/a"]
    assert list(trials["cue"]) == ["text", "none"]


# ----------------------------------------------------------------------------------------------------
# onsets, durations, run length
# ----------------------------------------------------------------------------------------------------
def test_missing_onset_column(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["start", "duration", "stim_file"], [[0, 1, "a.png"]])
    with pytest.raises(BadDataError, match="'onset'") as err:
        events_to_trials(path, task="x")
    assert "onset_column" in str(err.value) and str(path) in str(err.value)
    mapping = load_events_map(write_map(tmp_path / "m.toml", '[task.x]\nonset_column = "begin"\n'))
    with pytest.raises(BadDataError, match="no 'begin' column"):
        events_to_trials(path, task="x", events_map=mapping)


# a negative onset is a time before the first volume, which BIDS allows (tests/test_qa_negative_onsets.py)
@pytest.mark.parametrize("onset, duration", [("n/a", "2"), ("soon", "2"), ("3", "-2"), ("3", "later")])
def test_bad_times_on_trials_are_errors(tmp_path, onset, duration):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"],
                     [[0, 1, "a.png"], [onset, duration, "b.png"]])
    with pytest.raises(BadDataError, match="line 3") as err:
        events_to_trials(path, task="x")
    assert err.value.exit_code == 65


def test_bad_times_on_ignore_rows_are_dropped(tmp_path, caplog):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"],
                     [[0, 1, "a.png"], ["n/a", "n/a", "n/a"], [5, 1, "b.png"]])
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        trials = events_to_trials(path, task="x", include_ignore=True)
    assert list(trials["stim_file"]) == ["a.png", "b.png"]
    assert "dropped" in caplog.text


def test_rows_are_sorted_by_onset(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"], [[9, 1, "b.png"], [1, 1, "a.png"]])
    assert list(events_to_trials(path, task="x")["stim_file"]) == ["a.png", "b.png"]


def test_run_without_trials_warns(tmp_path, caplog):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "trial_type"], [[0, 30, "rest"]])
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        trials = events_to_trials(path, task="x")
    assert len(trials) == 0 and list(trials.columns) == list(TRIALS_COLUMNS)
    assert "no trials" in caplog.text


def test_check_events_within_run(tmp_path, caplog):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"],
                     [[0, 2, "a.png"], [18, 4, "b.png"], [20, 2, "c.png"], [31, 2, "d.png"]])
    trials = events_to_trials(path, task="x")
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        kept = check_events_within_run(trials, n_volumes=10, tr=2.0, path=path)
    assert list(kept["stim_file"]) == ["a.png", "b.png"]  # 20 s is the end: c and d start at/after it
    assert "2 event(s) start after the end" in caplog.text and "end after the end" in caplog.text
    with pytest.raises(BadDataError):
        check_events_within_run(trials, n_volumes=0, tr=2.0, path=path)


# ----------------------------------------------------------------------------------------------------
# table of several runs, summary
# ----------------------------------------------------------------------------------------------------
def test_build_trials_table_and_summary(tmp_path):
    a = write_tsv(tmp_path / "sub-01_ses-A_task-see_run-01_events.tsv", ["onset", "duration", "trial_type", "stim_file"],
                  [[0, 2, "stimulus", "a.png"], [3, 1, "response", "n/a"], [5, 2, "stimulus", "b.png"]])
    b = write_tsv(tmp_path / "sub-01_ses-A_task-imagine_run-02_events.tsv", ["onset", "duration", "trial_type", "stim_file"],
                  [[0, 2, "imagery", "a.png"]])
    table = build_trials_table([(a, {"subject": "01", "session": "A", "task": "see", "run": 1}),
                                (b, {"subject": "01", "session": "A", "task": "imagine", "run": 2})])
    assert list(table["run"]) == ["01", "01", "01", "02"]  # zero padding from the file name
    assert list(table["task"]) == ["see"] * 3 + ["imagine"]
    assert list(table["condition"]) == ["perception"] * 3 + ["imagery"]
    assert [r["rule"] for r in table.attrs["runs"]] == ["auto-detection"] * 2
    text = summarize_trials(table)
    see = next(line for line in text.splitlines() if line.startswith("see"))
    assert see.split()[:6] == ["see", "A", "01", "2", "1", "0"] and "response 1" in see
    assert "total: 3 trials" in text and "imagery 1" in text
    empty = build_trials_table([])
    assert list(empty.columns) == list(TRIALS_COLUMNS) and summarize_trials(empty) == "No events."


def test_trials_frame_types(tmp_path):
    path = write_tsv(tmp_path / "e_events.tsv", ["onset", "duration", "stim_file"], [["1.5", "2", "a.png"]])
    trials = events_to_trials(path, task="x")
    row = trials.iloc[0]
    assert isinstance(row["onset"], float) and row["onset"] == 1.5
    for column in TRIALS_COLUMNS[2:]:
        assert isinstance(row[column], str), column
    assert isinstance(trials, pd.DataFrame)
