"""Train / test splits of single-trial betas that cannot leak.

Rules (checked by :func:`check_no_leak`):

* a held-out perception stimulus never appears in training: *all* its repeats are held out;
* when the trials table has a ``split`` column set by the events rules (``train_sessions`` /
  ``test_sessions`` of a profile or ``--events-map`` section: ds001246, ds001506), it decides: ``train`` rows
  train, ``test`` rows test, ``none`` rows (ds001506's artificial shapes and letters) are not decoded;
  a ``train`` row showing a test stimulus is held out with the test rows (as below);
* otherwise, when a session or run label says ``test`` (e.g. ds001246's ``perceptionTest`` sessions), those
  sessions/runs are the test set, and their stimuli are removed from training wherever they occur;
* otherwise the test items are the stimuli shown more often than the rest (NSD's shared1000 design: test
  images are repeated, training images less so); when every stimulus has the same number of repeats, a
  seeded random ``test_fraction`` of the stimuli is held out (all repeats of each);
* imagery trials are never used for training. With ``fine_tune_imagery`` they get their own
  cross-validation folds, grouped by imagined item, so that an imagined item is never both tuned on and
  evaluated in the same fold.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import BadDataError

LOG = logging.getLogger("m2i.decoding")

_TEST_LABEL = re.compile(r"test", re.IGNORECASE)
#: values of the trials table's ``split`` column (bids_m2i.bids.events.SPLITS); ``n/a`` = not set
SPLIT_VALUES = ("train", "test", "none")


@dataclass
class DecodingSplit:
    """Row indices (into the trials table / betas rows) of each part.

    Attributes
    ----------
    train : ndarray (n_train,)
        Perception trials used to fit the decoder.
    test : ndarray (n_test,)
        Held-out perception trials (evaluated, never fitted).
    imagery : ndarray (n_imagery,)
        Imagery trials (evaluated; used for fine-tuning only through ``imagery_folds``).
    imagery_folds : ndarray (n_imagery,) or None
        Fold label of each imagery trial when fine-tuning is asked for.
    rule : str
        How the test set was chosen (written to the model sidecar).
    """

    train: np.ndarray
    test: np.ndarray
    imagery: np.ndarray
    imagery_folds: np.ndarray | None = None
    rule: str = ""
    test_stimuli: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"n_train": int(len(self.train)), "n_test": int(len(self.test)),
                "n_imagery": int(len(self.imagery)), "n_test_stimuli": len(self.test_stimuli), "rule": self.rule}


def _column(trials: pd.DataFrame, name: str) -> pd.Series:
    if name in trials.columns:
        return trials[name].astype(str).fillna("n/a")
    return pd.Series(["n/a"] * len(trials), index=trials.index)


def stimulus_identity(trials: pd.DataFrame) -> pd.Series:
    """What was seen or imagined in each trial: the stimulus label, else the stimulus file (``n/a``: neither).

    The one definition of a trial's identity for the decoding split and for the checks made before a run
    starts (:func:`bids_m2i.bids.inputs.check_has_training_trials`).

    Labels that name the same image file are one identity (the alphabetically first label stands for all):
    a lab that lists one image under two stimulus names (a reused picture, a catch trial) would otherwise
    have one name held out for testing while the decoder trains on the same picture under the other, and
    the evaluation would count the two names as distinct candidates that tie with each other."""
    stim = _column(trials, "stimulus")
    files = _column(trials, "stim_file")
    identity = stim.where(stim != "n/a", files)
    keys = files.map(_file_key)
    # only what was *seen* links labels: an imagery trial's stim_file may be the screen shown while imagining (one
    # blank or cue-frame image for every trial), and merging its labels through it would make every imagined item
    # one target; an imagery label already linked through perception trials still takes the merged identity
    seen = _column(trials, "condition") != "imagery"
    pairs = {(label, key) for label, key, keep in zip(identity, keys, seen) if keep and label != "n/a" and key != "n/a"}
    if len({label for label, _ in pairs}) == len({key for _, key in pairs}) and \
            len(pairs) == len({label for label, _ in pairs}):
        return identity  # one file per label and one label per file: nothing to merge (the usual case)
    # union-find over labels linked by a shared file
    parent: dict[str, str] = {}

    def root(label):
        while parent.setdefault(label, label) != label:
            label = parent[label]
        return label

    first_label: dict[str, str] = {}
    for label, key in sorted(pairs):
        other = first_label.setdefault(key, label)
        a, b = root(label), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return identity.map(lambda label: root(label) if label in parent else label)


def _file_key(stim_file: str) -> str:
    """A stim_file value as a comparable path (``./a.png``, ``stimuli/a.png`` and ``a.png`` are one file)."""
    import posixpath

    if stim_file in ("", "n/a"):
        return "n/a"
    path = posixpath.normpath(stim_file.replace("\\", "/"))
    return path[len("stimuli/"):] if path.startswith("stimuli/") else path


_identity = stimulus_identity  # the earlier private name, used below


def split_trials(trials: pd.DataFrame, *, seed: int = 0, test_fraction: float = 0.2,
                 fine_tune_imagery: bool = False, imagery_folds: int = 5) -> DecodingSplit:
    """Split the trials of one participant into training, held-out test and imagery parts.

    Parameters
    ----------
    trials : DataFrame, one row per beta volume
        Needs ``condition`` (perception | imagery) and ``stimulus`` (or ``stim_file``); ``session`` and
        ``run`` are used when present.
    seed : int
    test_fraction : float
        Share of perception stimuli held out when the design marks no test items.
    fine_tune_imagery : bool
        Give imagery trials their own cross-validation folds (grouped by imagined item).
    imagery_folds : int
        Number of such folds (at most the number of distinct imagined items).
    """
    if len(trials) == 0:
        raise BadDataError("no trials to decode", hint="check the events files and --task filters")
    rows = np.arange(len(trials))
    condition = _column(trials, "condition").to_numpy()
    identity = _identity(trials).to_numpy()
    perception = condition == "perception"
    imagery = condition == "imagery"
    usable = identity != "n/a"
    perc_rows = rows[perception & usable]
    if len(perc_rows) == 0:
        raise BadDataError("no perception trials with a stimulus: the decoder has nothing to train on",
                           hint="check the condition/stimulus columns (m2i --print-trials)")
    rng = np.random.default_rng(seed)

    labels = (_column(trials, "session") + " " + _column(trials, "run") + " " + _column(trials, "task")).to_numpy()
    marked_test = np.array([bool(_TEST_LABEL.search(x)) for x in labels])
    declared = _column(trials, "split").to_numpy()
    declared_rows = perc_rows[np.isin(declared[perc_rows], SPLIT_VALUES)]
    if len(declared_rows):
        perc_rows, test_stimuli, rule = _declared_split(trials, perc_rows, declared, identity)
    elif np.any(marked_test[perc_rows]):
        test_stimuli = sorted(set(identity[perc_rows][marked_test[perc_rows]]))
        rule = "session/run/task labelled test"
    else:
        stim, counts = np.unique(identity[perc_rows], return_counts=True)
        if counts.max() > counts.min() and np.mean(counts == counts.max()) <= 0.5:
            test_stimuli = sorted(stim[counts == counts.max()])
            rule = f"stimuli with the most repeats ({counts.max()})"
        else:
            n_test = int(round(test_fraction * len(stim)))
            n_test = min(max(n_test, 1), len(stim) - 1)
            if len(stim) < 2:
                raise BadDataError("only one perception stimulus: cannot hold any out for testing")
            test_stimuli = sorted(rng.choice(stim, size=n_test, replace=False))
            rule = f"seeded random {test_fraction:.0%} of stimuli (seed {seed})"
    is_test_stimulus = np.isin(identity, np.asarray(test_stimuli, dtype=identity.dtype))
    test = perc_rows[is_test_stimulus[perc_rows]]
    train = perc_rows[~is_test_stimulus[perc_rows]]
    if len(train) == 0:
        hint = ("the selected sessions hold no training session of the events rules (train_sessions, "
                "docs/events.md): select training sessions too, or run with --stop-after glm") if len(declared_rows) \
            else "the design marks all sessions as test; relabel the training sessions"
        raise BadDataError("every perception stimulus is a test item: nothing left to train on", hint=hint)
    n_train_stimuli = len(set(identity[train]))
    if n_train_stimuli < 2:
        # one training stimulus gives every training trial the same target: the decoder can only answer that
        # image whatever the betas (all scores at chance), and with one trial the voxel scaling failed with "all
        # voxels are constant", which sent users looking at their betas instead of their design
        raise BadDataError(
            f"only {n_train_stimuli} distinct perception stimulus is left for training ({len(train)} trial(s)) after "
            f"holding out {len(test_stimuli)} test stimulus(es) ({rule}): a decoder needs at least 2 distinct "
            "training stimuli", hint="decoding needs a design with more perception stimuli; run with --stop-after glm "
            "to get the betas only")
    imagery_rows = rows[imagery]
    folds = None
    if fine_tune_imagery and len(imagery_rows):
        items = np.unique(identity[imagery_rows])
        k = max(2, min(int(imagery_folds), len(items)))
        order = rng.permutation(len(items))
        fold_of_item = dict(zip(items[order], np.arange(len(items)) % k))
        folds = np.array([fold_of_item[i] for i in identity[imagery_rows]], dtype=np.int64)
    split = DecodingSplit(train=train, test=test, imagery=imagery_rows, imagery_folds=folds, rule=rule,
                          test_stimuli=list(test_stimuli))
    check_no_leak(split, trials)
    LOG.info("decoding split: %s", split.summary())
    return split


def _declared_split(trials: pd.DataFrame, perc_rows: np.ndarray, declared: np.ndarray, identity: np.ndarray):
    """Perception rows to use, test stimuli and rule text from the ``split`` column of the events rules.

    ``none`` rows are left out; rows without a value (``n/a``: a task whose rule names no sessions) too, with
    a warning, since mixing the events rules' split with a guessed one could leak. Test stimuli are those of
    the ``test`` rows; ``train`` rows showing one of them are then held out by the caller.
    Returns (perception rows to use, test stimuli, rule text).
    """
    values = declared[perc_rows]
    unset = perc_rows[~np.isin(values, SPLIT_VALUES)]
    if len(unset):
        tasks = sorted(set(_column(trials, "task").to_numpy()[unset]))
        LOG.warning("%d perception trial(s) of task(s) %s have no train/test split in their events rule while "
                    "other tasks' rules set one; they are not decoded (set train_sessions/test_sessions for them, "
                    "docs/events.md)", len(unset), ", ".join(tasks))
    test_stimuli = sorted(set(identity[perc_rows[values == "test"]]))
    used = perc_rows[np.isin(values, ("train", "test"))]
    counts = {v: int(np.sum(values == v)) for v in SPLIT_VALUES}
    rule = (f"events rules' split by session: {counts['train']} train, {counts['test']} test, "
            f"{counts['none'] + len(unset)} not decoded")
    return used, test_stimuli, rule


def check_no_leak(split: DecodingSplit, trials: pd.DataFrame) -> None:
    """Raise if a held-out stimulus or an imagery trial is among the training rows."""
    identity = _identity(trials).to_numpy()
    condition = _column(trials, "condition").to_numpy()
    train_ids = set(identity[split.train])
    leaked = train_ids & set(identity[split.test])
    if leaked:
        raise BadDataError(f"split leaks held-out stimuli into training: {sorted(leaked)[:5]}")
    if np.any(condition[split.train] != "perception"):
        raise BadDataError("split puts non-perception trials into training")
    if set(split.train) & set(split.test) or set(split.train) & set(split.imagery):
        raise BadDataError("split reuses rows across parts")


def repeat_groups(labels) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group rows by label (e.g. the test stimulus of each trial) in order of first appearance.

    Returns the distinct labels (g,) and, for each, the row indices holding it.
    """
    labels = np.asarray(labels).astype(str)
    distinct = list(dict.fromkeys(labels))
    return np.asarray(distinct), [np.flatnonzero(labels == d) for d in distinct]


def average_repeats(betas: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Average the betas of repeated presentations of the same item before predicting.

    Parameters
    ----------
    betas : ndarray (n, v)
    labels : array (n,)
        Stimulus identity of each row.

    Returns
    -------
    averaged : ndarray (g, v); distinct labels (g,); row indices of each group.
    """
    distinct, groups = repeat_groups(labels)
    betas = np.asarray(betas, dtype=np.float32)
    averaged = np.stack([betas[idx].mean(0) for idx in groups]) if groups else betas[:0]
    return averaged, distinct, groups
