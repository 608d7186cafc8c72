"""What a run on a cluster needs from the command line: nipype's batch plugins get a LOGNAME, and the
tasks of a job array, which start in the same second, each keep their own log and config files."""

from __future__ import annotations

import os
import tomllib

import pytest

from bids_m2i.cli import runner
from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


@pytest.fixture
def two_participants(tmp_path):
    return make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))


# The quickest run that goes through the start-up checks, logs and resolved config and then stops: a task the
# dataset does not have selects no data (exit 18) before any processing.
NO_DATA = 18


def _quick_run(bids, tmp_path, *options):
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "--task", "nosuchtask", "--skip-bids-validation",
                    "-w", str(tmp_path / "work"), *options])


@pytest.fixture
def no_login_names(monkeypatch, tmp_path):
    """The environment of a batch job or a container started without a login: neither LOGNAME nor USER; on a
    cluster's node, where SLURM's ``sbatch`` is on PATH (a stand-in here: m2i checks that it is there at start-up,
    and the quick runs stop before any job is submitted)."""
    monkeypatch.delenv("LOGNAME", raising=False)
    monkeypatch.delenv("USER", raising=False)
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_slurm_plugin_without_logname_takes_the_account_name(two_participants, tmp_path, no_login_names):
    import pwd

    code = _quick_run(two_participants, tmp_path, "--plugin", "SLURM")
    assert code == NO_DATA
    # nipype's SLURM plugin reads os.environ["LOGNAME"] when it submits; the run set it beforehand.
    assert os.environ["LOGNAME"] == pwd.getpwuid(os.getuid()).pw_name


def test_slurm_plugin_without_any_user_name_is_a_usage_error(two_participants, tmp_path, no_login_names,
                                                            monkeypatch, capsys):
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    code = _quick_run(two_participants, tmp_path, "--plugin", "SLURM")
    assert code == 64
    err = capsys.readouterr().err
    assert "export LOGNAME" in err and "SLURM" in err and "Traceback" not in err
    assert "LOGNAME" not in os.environ
    assert not (tmp_path / "out").exists(), "checked before anything is written"


def test_user_is_used_when_logname_is_missing(two_participants, tmp_path, no_login_names, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    assert _quick_run(two_participants, tmp_path, "--plugin", "SLURM") == NO_DATA
    assert os.environ["LOGNAME"] == "alice"


def test_multiproc_does_not_touch_logname(two_participants, tmp_path, no_login_names):
    assert _quick_run(two_participants, tmp_path, "--nprocs", "1") == NO_DATA
    assert "LOGNAME" not in os.environ


def test_array_tasks_in_the_same_second_keep_their_own_logs(two_participants, tmp_path, monkeypatch):
    """Two array tasks starting in the same second used to append to one log and overwrite one config."""
    monkeypatch.setattr(runner.time, "strftime", lambda fmt, *args: "20260102T030405Z")
    for label in ["01", "02"]:
        assert _quick_run(two_participants, tmp_path, "--participant-label", label) == NO_DATA
    logs = tmp_path / "out" / "logs"
    assert sorted(path.name for path in logs.glob("m2i-participant-*.log")) == [
        "m2i-participant-20260102T030405Z_sub-01.log", "m2i-participant-20260102T030405Z_sub-02.log"]
    configs = sorted(logs.glob("config-*.toml"))
    assert [path.name for path in configs] == ["config-20260102T030405Z_sub-01.toml",
                                               "config-20260102T030405Z_sub-02.toml"]
    labels = [tomllib.loads(path.read_text())["bids"]["participant_label"] for path in configs]
    assert labels == [["01"], ["02"]]
    # A run of every participant (no label) keeps the plain name.
    assert _quick_run(two_participants, tmp_path) == NO_DATA
    assert (logs / "config-20260102T030405Z.toml").exists()


@pytest.mark.parametrize("plugin, seconds", [("MultiProc", 0.1), ("Linear", 0.1), ("SLURM", 2.0), ("SGE", 2.0)])
def test_batch_plugins_poll_the_cluster_every_2_s(two_participants, tmp_path, monkeypatch, plugin, seconds):
    """A batch plugin runs `squeue` (`qstat`) for every pending job at every poll: 0.1 s, right for MultiProc,
    would ask the scheduler ten times a second per job."""
    from nipype import config as nipype_config

    from bids_m2i.config import build_config
    from bids_m2i.workflows import base

    class RecordingWorkflow:
        config = {"execution": {}}

        def run(self, plugin, plugin_args):
            self.plugin = plugin

    workflow = RecordingWorkflow()
    monkeypatch.setattr(base, "init_m2i_wf", lambda *args: workflow)
    monkeypatch.setattr(base, "cap_node_memory", lambda *args: None)
    config = build_config(two_participants, tmp_path / "out", "participant", {"plugin": plugin}, {"plugin"})
    base.run_participant_workflows(config, {}, tmp_path / "work")
    # MultiProc is given as a plugin object (of our subclass), the batch plugins by name
    name = workflow.plugin if isinstance(workflow.plugin, str) else type(workflow.plugin).__name__
    assert plugin in name
    assert workflow.config["execution"]["poll_sleep_duration"] == seconds
    assert float(nipype_config.get("execution", "poll_sleep_duration")) == seconds


def test_each_participant_report_names_its_own_config(tmp_path):
    from bids_m2i.reports.participant import run_configs_for

    for name in ["config-20260101T000000Z.toml", "config-20260102T000000Z_sub-01.toml",
                 "config-20260102T000000Z_sub-02.toml", "config-20260103T000000Z_sub-03+04.toml"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in run_configs_for(tmp_path, "01")][-1] == "config-20260102T000000Z_sub-01.toml"
    assert [p.name for p in run_configs_for(tmp_path, "02")][-1] == "config-20260102T000000Z_sub-02.toml"
    assert [p.name for p in run_configs_for(tmp_path, "04")][-1] == "config-20260103T000000Z_sub-03+04.toml"
    assert [p.name for p in run_configs_for(tmp_path, "05")] == ["config-20260101T000000Z.toml"]
