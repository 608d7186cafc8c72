"""Small hand-made datasets for command-line tests (the simulator makes the realistic ones)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_bold(path: Path, shape=(6, 6, 4), n_volumes=40, tr=2.0, seed=0, dtype=np.float32) -> Path:
    rng = np.random.default_rng(seed)
    data = (1000 + 10 * rng.standard_normal((*shape, n_volumes))).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def make_minimal_bids(root: Path, subjects=("01",), tasks=("perception",), runs=("01",), tr=2.0,
                      n_volumes=40) -> Path:
    """A tiny valid BIDS dataset with events in the m2i native format (no stimulus images)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "minimal", "BIDSVersion": "1.10.0"}))
    (root / "README").write_text("A minimal dataset made by the m2i tests.\n")
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    for task in tasks:
        (root / f"task-{task}_bold.json").write_text(json.dumps({"RepetitionTime": tr, "TaskName": task}))
    for subject in subjects:
        for task in tasks:
            for run in runs:
                stem = root / f"sub-{subject}" / "func" / f"sub-{subject}_task-{task}_run-{run}"
                write_bold(Path(f"{stem}_bold.nii.gz"), tr=tr, n_volumes=n_volumes)
                rows = ["onset\tduration\ttrial_type\tstimulus\tstim_file\tcue\tcue_text\tcategory"]
                for i in range(6):
                    rows.append(f"{4 + 10 * i}\t3\tstimulus\timg-{i:04d}\tn/a\tnone\tn/a\tn/a")
                Path(f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")
    return root


def import_benchmark(name: str):
    """A script of ``benchmarks/`` as a module (they are scripts, not a package: their folder goes on sys.path)."""
    import importlib
    import sys

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)


def independent_glm_session(n_voxels: int, seed: int, **kwargs):
    """A session of the GLM benchmark's independent generator (``benchmarks/glm_generators.py``: double-gamma
    HRFs, TR-locked design, AR + global + physiological noise) as the engine's inputs.

    Returns (session, runs, trials): the generator's arrays (``true_betas``, ``responsive`` ...), the
    ``RunData`` list and the trials table."""
    import pandas as pd

    from bids_m2i.glm.design import RunData

    simulate = import_benchmark("glm_generators").simulate

    settings = dict(n_runs=6, n_volumes=200, n_stimuli=120, n_repeats=3)
    s = simulate(n_voxels=n_voxels, seed=seed, **{**settings, **kwargs})
    runs = [RunData(data=d, tr=s.tr, run=str(i + 1)) for i, d in enumerate(s.runs)]
    trials = pd.DataFrame({"onset": s.onsets, "duration": s.durations, "run": [str(r + 1) for r in s.trial_run],
                           "role": "trial", "event_type": "stimulus", "condition": "perception",
                           "stimulus": [f"img-{k:04d}" for k in s.stimulus]})
    return s, runs, trials


def regular_trials(n_runs: int, n_volumes: int, tr: float, every: float, n_stimuli: int):
    """Single trials (3 s) every ``every`` seconds in each run, stimuli cycling over ``n_stimuli`` names (so
    repeated within and across runs), and the engine's run designs for them.

    Returns (trials, designs, rows) as ``build_run_designs`` gives them."""
    import numpy as np
    import pandas as pd

    from bids_m2i.glm.design import RunData, build_run_designs

    onsets = np.arange(4.0, n_volumes * tr - 20.0, every)
    trials = pd.DataFrame([{"onset": o, "duration": 3.0, "run": str(r + 1), "role": "trial",
                            "event_type": "stimulus", "condition": "perception", "stimulus": f"s{i % n_stimuli:02d}"}
                           for r in range(n_runs) for i, o in enumerate(onsets)])
    empty = [RunData(np.zeros((1, n_volumes)), tr, str(r + 1)) for r in range(n_runs)]
    designs, rows = build_run_designs(empty, trials, "polynomial", 0.01, None)
    return trials, designs, rows


def ar1_noise(rng, n_voxels: int, n_volumes: int, rho: float):
    """Unit-variance AR(1) noise, (n_voxels, n_volumes)."""
    import numpy as np

    noise = np.empty((n_voxels, n_volumes))
    noise[:, 0] = rng.standard_normal(n_voxels)
    for t in range(1, n_volumes):
        noise[:, t] = rho * noise[:, t - 1] + np.sqrt(1 - rho ** 2) * rng.standard_normal(n_voxels)
    return noise


def pinned_glm_session(generator: str, n_voxels: int = 900):
    """The two small sessions the GLM stage tests pin their gains on: ``"ours"`` (``bids_m2i.glm.simulation``,
    seed 21) or ``"independent"`` (the benchmark's generator, seed 3). Returns (runs, trials, true_betas,
    responsive)."""
    if generator == "ours":
        from bids_m2i.glm.simulation import simulate_session

        sim = simulate_session(n_voxels=n_voxels, seed=21)
        return sim.runs, sim.trials, sim.true_betas, sim.responsive
    s, runs, trials = independent_glm_session(n_voxels, 3)
    return runs, trials, s.true_betas, s.responsive


# --- running a command as an unprivileged user (tests run as root in CI: a permission test must drop to one) ---
NOBODY = 65534
DROP = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def python_for_nobody() -> str | None:
    """A Python interpreter of this version that uid 65534 can start (the venv's may sit below root-only
    folders), or ``None``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in [sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]:
        if shutil.which(python) and subprocess.run([*DROP, python, "-c", "pass"], capture_output=True,
                                                   cwd="/").returncode == 0:
            return python
    return None


@contextlib.contextmanager
def folder_for_nobody(prefix: str):
    """A new folder below /tmp for files uid 65534 must reach (pytest's folders are private to root); on exit
    every folder in it is made traversable again (tests take permissions away) and it is removed."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def open_to_everyone(base: Path, folder_mode: int = 0o777) -> None:
    """Every folder below ``base`` (and ``base``) ``folder_mode``, every file 0o644: readable by uid 65534."""
    for path in [base, *base.rglob("*")]:
        path.chmod(folder_mode if path.is_dir() else 0o644)


def group_alive(pgid: int, grace_s: float) -> bool:
    """Whether any process of a run's process group (nipype workers) is still alive ``grace_s`` after the main one
    ended: a worker that outlives it could still write into the work dir while the rerun starts."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a run's whole process group (nothing may outlive a test)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
