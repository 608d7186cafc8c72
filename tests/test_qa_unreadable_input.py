"""Input files the user may not read (another lab member's files, group-only permissions, a root-owned copy).

Run as uid 65534 (as root nothing is unreadable, so a root run proves nothing). Users saw exit 65 with "check
the file is a complete NIfTI image (re-export or re-download it)" for a BOLD file, "Cannot index the BIDS
dataset ... run the BIDS validator" for a sidecar, "replace it with a complete PNG/JPEG" for an image, and
exit 1 "unexpected failure: PermissionError" for an unreadable stimuli/ folder. Now each is exit 66 (sysexits'
"cannot open input") naming the path, the uid and the fix. Nothing is computed (the workflow is not started).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from helpers import DROP, python_for_nobody

REPO = Path(__file__).resolve().parents[1]
# the CLI with the workflow replaced by a marker: these checks happen before it, or not at all
SCRIPT = ("import site, sys; site.addsitedir({site!r}); sys.path.insert(0, {repo!r}); "
          "import bids_m2i.workflows.base as base; "
          "base.run_participant_workflows = lambda *a, **k: print('WORKFLOW-START', file=sys.stderr); "
          "from bids_m2i.cli.run import run_cli; sys.exit(run_cli(sys.argv[1:]))")


NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root to drop privileges to uid 65534")


@pytest.fixture(scope="module")
def python():
    found = python_for_nobody()
    if found is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    return found


@pytest.fixture
def dataset(tiny_dataset):
    """A copy under /tmp itself: pytest's own folders are private to root."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="m2i-qa-unreadable-", dir="/tmp"))
    shutil.copytree(tiny_dataset, root / "bids", ignore=shutil.ignore_patterns("derivatives"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path == root else (0o755 if path.is_dir() else 0o644))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run(python, root: Path) -> subprocess.CompletedProcess:
    code = SCRIPT.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO))
    return subprocess.run([*DROP, python, "-c", code, str(root / "bids"), str(root / "out"), "participant",
                           "-w", str(root / "work"), "--skip-bids-validation"],
                          capture_output=True, text=True, cwd=str(root), env={**os.environ, "HOME": "/nonexistent"},
                          timeout=300)


@NEEDS_ROOT
@pytest.mark.parametrize("relative, mode", [
    ("sub-01/func/sub-01_task-perception_run-01_bold.nii.gz", 0o600),
    ("sub-01/func/sub-01_task-perception_run-01_events.tsv", 0o600),
    ("task-perception_bold.json", 0o600),
    ("stimuli/img-0024.png", 0o600),
    ("stimuli", 0o700),
    ("sub-01/func", 0o700),  # pybids named a file it looked for inside: func/layout_config.json
])
def test_unreadable_input_is_66_naming_it(python, dataset, relative, mode):
    target = dataset / "bids" / relative
    target.chmod(mode)
    result = _run(python, dataset)
    assert result.returncode == 66, result.stderr[-2000:]
    assert "permission denied (m2i runs as uid 65534)" in result.stderr
    assert str(target) in result.stderr
    if target.is_dir() and relative.startswith("sub-"):
        assert f"Cannot read {target}: permission denied" in result.stderr  # the folder, not a file in it
    assert "Traceback" not in result.stderr and "WORKFLOW-START" not in result.stderr


@NEEDS_ROOT
def test_readable_copy_starts(python, dataset):
    result = _run(python, dataset)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WORKFLOW-START" in result.stderr


def test_dataset_description_not_an_object_is_65(tmp_path, capsys):
    """``[]`` or ``"text"`` parsed as JSON and the run went on (validation skipped); now 65 naming the file."""
    from bids_m2i.cli.run import run_cli
    from helpers import make_minimal_bids

    bids = make_minimal_bids(tmp_path / "bids")
    (bids / "dataset_description.json").write_text("[]")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    assert code == 65
    assert "holds a JSON list" in capsys.readouterr().err


@NEEDS_ROOT
def test_participant_folder_of_another_user_is_73_before_any_step(python, dataset):
    """A shared OUTPUT_DIR whose sub-01/ an earlier run of another user made: the run computed the motion
    correction, then failed naming a temporary file (``.sub-01_..._boldref.to5qom_3.tmp.nii.gz``)."""
    out = dataset / "out"
    (out / "sub-01" / "func").mkdir(parents=True)
    out.chmod(0o777)  # the project folder is shared; sub-01/ is root's, 0755
    result = _run(python, dataset)
    assert result.returncode == 73, result.stderr[-2000:]
    assert f"Cannot write into {out / 'sub-01'}" in result.stderr and "WORKFLOW-START" not in result.stderr


def test_atomic_write_failure_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    import errno
    import tempfile

    from bids_m2i.errors import OutputCreateError
    from bids_m2i.utils.atomic import write_text

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".x.abc123.tmp.json"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputCreateError) as info:
        write_text(tmp_path / "x.json", "{}")
    assert str(tmp_path / "x.json") in str(info.value) and ".tmp" not in str(info.value)
