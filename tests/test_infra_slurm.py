"""m2i on a real SLURM: a single-node cluster (Debian's slurm-wlm + munge) with 2 CPUs.

1. The documented submit wrapper (docs/scripts/slurm_submit.sh) on 2 simulated participants: its default
   request (8 cores) is refused at once instead of pending forever; with `-- --cpus-per-task 1 --mem 6G`
   the job array and the group job run, m2i gets the cores and memory of its job, and the output validates.
2. nipype's SLURM plugin (`--plugin SLURM`), started without LOGNAME and USER, as batch jobs often are.

Slow (minutes) and needing root to install and start the daemons: `make test-all` runs it; elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from infra import SingleNodeSlurm, ensure_packages

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "docs" / "scripts" / "slurm_submit.sh"
JOB_MEMORY_GB = 6


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("a single-node SLURM needs root (slurmd starts the jobs as their user)")
    ensure_packages(SingleNodeSlurm.PACKAGES, "the SLURM test")
    cluster = SingleNodeSlurm(cpus=2)
    with cluster:
        if cluster.memory_mb < JOB_MEMORY_GB * 1024:
            pytest.skip(f"this machine has {cluster.memory_mb} MB: the jobs ask for {JOB_MEMORY_GB} GB")
        yield cluster


@pytest.fixture(scope="module")
def two_participants(tmp_path_factory):
    from bids_m2i.simulate.dataset import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("slurm-sim") / "bids", preset="tiny", subjects=2, seed=1)


def _job_env(slurm: SingleNodeSlurm, **extra) -> dict[str, str]:
    """What a user on the login node has: m2i on PATH (this venv), the tree under test importable."""
    env = dict(slurm.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _tails(folder: Path, pattern: str = "*.log", size: int = 2500) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-size:]}" for p in sorted(folder.glob(pattern)))


@pytest.mark.timeout(3600)
def test_submit_wrapper_runs_array_and_group_on_a_two_core_node(slurm, two_participants, tmp_path):
    from bids_m2i.bids.validation import run_validator

    out, work, logs = tmp_path / "out", tmp_path / "work", tmp_path / "joblogs"
    logs.mkdir()
    env = _job_env(slurm, BIDS_DIR=str(two_participants), OUT_DIR=str(out), WORK_ROOT=str(work))

    # The scripts' defaults (8 cores, 32 GB) fit no node here: refused at once, not left pending forever.
    refused = slurm.run("bash", str(SUBMIT), "slurm", env=env, cwd=logs)
    assert refused.returncode == 64, refused.stdout + refused.stderr
    assert "Requested node configuration is not available" in refused.stderr
    assert "--cpus-per-task" in refused.stderr
    assert slurm.run("squeue", "-h").stdout.strip() == "", "nothing may have been submitted"

    submitted = slurm.run("bash", str(SUBMIT), "slurm", "--skip-bids-validation", "--",
                          "--cpus-per-task", "1", "--mem", f"{JOB_MEMORY_GB}G", "--time", "01:00:00",
                          env=env, cwd=logs)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    match = re.search(r"job array (\d+) \(2 tasks\); group: job (\d+)", submitted.stdout)
    assert match, submitted.stdout
    array_job, group_job = match.groups()

    states = slurm.wait_for_jobs([array_job, group_job], timeout=1800)
    assert states == {array_job: ["COMPLETED", "COMPLETED"], group_job: ["COMPLETED"]}, (
        f"{states}\n{_tails(logs)}\n{slurm.logs()}")

    # One log per array task and one for the group job, in the folder the wrapper ran from.
    assert sorted(p.name for p in logs.glob("*.log")) == [
        f"m2i-group-{group_job}.log", f"m2i-participant-{array_job}_0.log", f"m2i-participant-{array_job}_1.log"]
    # m2i was given the job's cores and 90 % of its memory; each array task kept its own resolved config.
    configs = {tuple(c["bids"]["participant_label"]): c["execution"] for c in
               (tomllib.loads(p.read_text()) for p in sorted((out / "logs").glob("config-*_sub-*.toml")))}
    assert configs.keys() == {("01",), ("02",)}
    for execution in configs.values():
        assert execution["nprocs"] == 1 and execution["mem_gb"] == pytest.approx(0.9 * JOB_MEMORY_GB, abs=0.05)
    for label in ["01", "02"]:
        assert (out / f"sub-{label}.html").exists()
        assert list((out / f"sub-{label}").rglob("*_stat-effect_*statseries.nii.gz")), f"no betas for {label}"
        assert (work / f"sub-{label}").is_dir()
    group_files = [p for p in (out / "group").rglob("*") if p.is_file()]
    assert group_files, _tails(logs)
    report = run_validator(out)
    assert report.n_errors == 0, report.summary()


@pytest.mark.timeout(3600)
def test_nipype_slurm_plugin_without_logname(slurm, two_participants, tmp_path):
    """Every processing step becomes a SLURM job; the run starts without LOGNAME and USER."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = _job_env(slurm)
    env.pop("LOGNAME", None)
    env.pop("USER", None)
    plugin_args = json.dumps({"sbatch_args": "--cpus-per-task 1 --mem 2G --time 00:30:00"})
    result = slurm.run(
        sys.executable, "-m", "bids_m2i.cli.run", str(two_participants), str(out), "participant",
        "--participant-label", "01", "-w", str(work), "--skip-bids-validation",
        "--plugin", "SLURM", "--plugin-args", plugin_args, env=env, cwd=tmp_path, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + slurm.logs()
    assert (out / "sub-01.html").exists()
    assert list((out / "sub-01").rglob("*_stat-effect_*statseries.nii.gz"))
    # The steps really went through sbatch: nipype's batch scripts and the jobs' output files.
    batch_scripts = list(work.rglob("batch/batchscript_*.sh"))
    slurm_outputs = list(work.rglob("batch/slurm-*.out"))
    assert batch_scripts and slurm_outputs, sorted(str(p) for p in work.rglob("batch/*"))[:20]
    # Each job, finished, is still known to the controller (MinJobAge) under the name nipype gave it.
    job_ids = sorted({re.search(r"slurm-(\d+)\.out", p.name).group(1) for p in slurm_outputs}, key=int)
    names = re.findall(r"JobName=(\S+)", slurm.run("scontrol", "-o", "show", "job", job_ids[0]).stdout)
    import pwd

    assert names and names[0].endswith("." + pwd.getpwuid(os.getuid()).pw_name)  # nipype: <step>...<LOGNAME>
