"""The Mind-to-Image protocol: perception runs (NSD-like) and imagery runs (memory and pure imagination).

Perception: each image is shown for ``stim_duration`` s then ``isi`` s of fixation; training images are
shown ``train_repeats`` times and held-out test images ``test_repeats`` times, every repeat of an image in a
different run where there are enough runs; some blank trials keep the design efficient (as NSD).
Imagery: each trial is a ``cue`` event (a brief flash of a seen image, or a text description), a short gap,
an ``imagery`` event, then a jittered rest. Memory targets are the held-out test images; pure-imagination
targets are novel images that only exist in the ground truth.

All times are multiples of 0.1 s so that the boxcars of the brain model are exact on its 0.1 s grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

EVENT_COLUMNS = ["onset", "duration", "trial_type", "stimulus", "stim_file", "cue", "cue_text", "category"]
# extra ground-truth columns (derivatives only)
TRUTH_COLUMNS = ["event_index", "role", "condition", "target_file"]


@dataclass
class Run:
    """One functional run: its entities, its length and its events (with ground-truth columns)."""

    task: str  # "perception" | "imagery"
    session: str | None
    run: str  # "01", "02", ...
    n_volumes: int
    events: pd.DataFrame  # EVENT_COLUMNS + TRUTH_COLUMNS

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.task, self.session, self.run)


def _round_time(value: float) -> float:
    return round(round(value * 10) / 10, 1)


def _deal_to_runs(rng, names: list[str], repeats: int, n_runs: int, start: int) -> list[list[str]]:
    """Distribute ``repeats`` presentations of each name over runs, repeats in different runs."""
    runs: list[list[str]] = [[] for _ in range(n_runs)]
    pointer = start
    for name in rng.permutation(names):
        for _ in range(repeats):
            runs[pointer % n_runs].append(str(name))
            pointer += 1
    return runs


def build_protocol(rng: np.random.Generator, cfg: dict, train: list[str], test: list[str], novel: list[str],
                   stim_info: dict[str, dict]) -> list[Run]:
    """Build every run of one participant.

    Parameters
    ----------
    rng : numpy Generator (the participant's design stream).
    cfg : preset parameters (``tr``, ``sessions``, ``perception_runs``, ``imagery_runs``, ``train_repeats``,
        ``test_repeats``, ``memory_trials``, ``text_trials``, timings).
    train, test, novel : stimulus names (training images, held-out test images, pure-imagination targets).
    stim_info : name -> {"category", "description"}.
    """
    sessions = [None] if cfg["sessions"] <= 1 else [f"{s + 1:02d}" for s in range(cfg["sessions"])]
    n_perc = cfg["perception_runs"] * len(sessions)
    n_imag = cfg["imagery_runs"] * len(sessions)
    perception_lists = [a + b for a, b in zip(
        _deal_to_runs(rng, train, cfg["train_repeats"], n_perc, 0),
        _deal_to_runs(rng, test, cfg["test_repeats"], n_perc, n_perc // 2),
    )]
    imagery_trials = [("image", test[k % len(test)]) for k in range(cfg["memory_trials"])]
    imagery_trials += [("text", novel[k % len(novel)]) for k in range(cfg["text_trials"])]
    order = rng.permutation(len(imagery_trials))
    imagery_lists: list[list[tuple[str, str]]] = [[] for _ in range(max(n_imag, 1))]
    for position, index in enumerate(order):
        imagery_lists[position % max(n_imag, 1)].append(imagery_trials[index])

    runs: list[Run] = []
    for s_index, session in enumerate(sessions):
        for r in range(cfg["perception_runs"]):
            names = list(rng.permutation(perception_lists[s_index * cfg["perception_runs"] + r]))
            events = _perception_events(rng, cfg, names, stim_info)
            runs.append(Run("perception", session, f"{r + 1:02d}", _n_volumes(events, cfg), events))
        for r in range(cfg["imagery_runs"]):
            trials = imagery_lists[s_index * cfg["imagery_runs"] + r]
            events = _imagery_events(rng, cfg, trials, stim_info)
            runs.append(Run("imagery", session, f"{r + 1:02d}", _n_volumes(events, cfg), events))
    return runs


def _n_volumes(events: pd.DataFrame, cfg: dict) -> int:
    end = float((events["onset"] + events["duration"]).max()) if len(events) else 0.0
    return int(math.ceil((end + cfg["lead_out"]) / cfg["tr"]))


def _row(onset, duration, trial_type, stimulus, cue, cue_text, category, role, condition, stim_file, target_file):
    return {
        "onset": _round_time(onset), "duration": _round_time(duration), "trial_type": trial_type,
        "stimulus": stimulus, "stim_file": stim_file, "cue": cue, "cue_text": cue_text, "category": category,
        "role": role, "condition": condition, "target_file": target_file,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in EVENT_COLUMNS + TRUTH_COLUMNS if c != "event_index"])
    frame.insert(len(EVENT_COLUMNS), "event_index", np.arange(len(frame)))
    return frame


def stim_path(name: str) -> str:
    """``stim_file`` value: relative to ``stimuli/`` as the BIDS specification says (the validator checks it)."""
    return f"{name}.png"


def target_path(name: str) -> str:
    """Where the target image of ``name`` lives, relative to the raw dataset root."""
    if name.startswith("nov-"):
        return f"derivatives/simulation/targets/{name}.png"
    return f"stimuli/{name}.png"


def _perception_events(rng, cfg, names, stim_info) -> pd.DataFrame:
    rows = []
    time = cfg["lead_in"]
    for name in names:
        if rng.random() < cfg["blank_probability"]:  # a blank trial: fixation only
            time += cfg["stim_duration"] + cfg["isi"]
        rows.append(_row(time, cfg["stim_duration"], "stimulus", name, "none", "n/a",
                         stim_info[name]["category"], "trial", "perception", stim_path(name), target_path(name)))
        time += cfg["stim_duration"] + cfg["isi"]
    return _frame(rows)


def _imagery_events(rng, cfg, trials, stim_info) -> pd.DataFrame:
    rows = []
    time = cfg["lead_in"]
    for cue, name in trials:
        category = stim_info[name]["category"]
        if cue == "image":
            stim_file, cue_text = stim_path(name), "n/a"
        else:
            stim_file, cue_text = "n/a", stim_info[name]["description"]
        rows.append(_row(time, cfg["cue_duration"], "cue", name, cue, cue_text, category, "nuisance",
                         "imagery", stim_file, target_path(name)))
        time += cfg["cue_duration"] + cfg["cue_gap"]
        rows.append(_row(time, cfg["imagery_duration"], "imagery", name, cue, cue_text, category, "trial",
                         "imagery", stim_file, target_path(name)))
        time += cfg["imagery_duration"] + _round_time(rng.uniform(*cfg["imagery_rest"]))
    return _frame(rows)


EVENTS_SIDECAR = {
    "onset": {"Description": "Onset of the event from the start of the first volume", "Units": "s"},
    "duration": {"Description": "Duration of the event", "Units": "s"},
    "trial_type": {
        "Description": "Kind of event (m2i native format)",
        "Levels": {
            "stimulus": "Perception trial: the image is shown",
            "cue": "Cue before an imagery trial: the image flashed (cue=image) or a text description (cue=text)",
            "imagery": "Imagery trial: the participant imagines the target with eyes on a fixation point",
        },
    },
    "stimulus": {"Description": "Identity of what is seen or imagined; nov-* targets are novel (pure imagination)"},
    "stim_file": {"Description": "Image shown, relative to the stimuli/ folder; n/a for text cues"},
    "cue": {"Description": "Cue of an imagery trial", "Levels": {"image": "imagery from memory: the image was "
            "flashed as the cue", "text": "pure imagination from a text description", "none": "no cue (perception)"}},
    "cue_text": {"Description": "Text description shown as the cue of pure-imagination trials"},
    "category": {"Description": "Category of the target: shape of its main object"},
}
