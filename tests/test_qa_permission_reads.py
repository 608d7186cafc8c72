"""A "permission denied" that no stage named: reading an input outside BIDS_DIR is 66, writing stays 73.

Before, every such PermissionError outside BIDS_DIR was reported as 73 "Cannot write FILE ... choose an
output/work folder you can write to", also when the file was an input this user may not read (a lab member's
models folder or fMRIPrep outputs under group-only permissions): the wrong cause and the wrong fix. The stages
name the inputs they know (qa25); this is the last resort in ``cli/run.py``. The cases run as uid 65534: as
root every access is allowed and nothing could fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from helpers import DROP, NOBODY, folder_for_nobody, make_minimal_bids, open_to_everyone, python_for_nobody

REPO = Path(__file__).resolve().parents[1]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root to drop privileges to uid 65534")
# the run replaced by one file operation, so that the PermissionError reaches the CLI's last resort unnamed
PROBE = """
import json, site, sys
site.addsitedir({site!r}); sys.path.insert(0, {repo!r})
import bids_m2i.cli.runner as runner
from bids_m2i.cli.run import run_cli
for i, (operation, path, args) in enumerate(json.loads(sys.argv[1])):
    def act(*a, operation=operation, path=path, **k):
        if operation == "read":
            open(path, "rb").read()
        else:
            open(path, "wb").write(b"x")
        return 0
    runner.run = act
    code = run_cli(args)
    print(f"@@CASE {{i}} {{code}}", file=sys.stderr, flush=True)
"""


@NEEDS_ROOT
def test_unnamed_permission_errors_tell_reading_from_writing():
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with folder_for_nobody("m2i-perm-") as base:
        bids = make_minimal_bids(base / "bids")
        private = base / "lab-models"
        private.mkdir()
        (private / "weights.safetensors").write_bytes(b"0")
        locked = base / "locked-folder"
        locked.mkdir()
        (locked / "inside.json").write_text("{}")
        closed = base / "root-owned"
        closed.mkdir()
        open_to_everyone(base)
        (private / "weights.safetensors").chmod(0o600)
        locked.chmod(0o700)
        closed.chmod(0o755)
        common = ["participant", "--skip-bids-validation"]
        cases = [
            ("read", str(private / "weights.safetensors"), [str(bids), str(base / "out0"), *common, "-w", str(base / "w0")]),
            ("read", str(locked / "inside.json"), [str(bids), str(base / "out1"), *common, "-w", str(base / "w1")]),
            ("write", str(closed / "new.txt"), [str(bids), str(base / "out2"), *common, "-w", str(base / "w2")]),
        ]
        script = PROBE.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO))
        result = subprocess.run([*DROP, python, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                                cwd=str(base), env={**os.environ, "HOME": "/nonexistent"}, timeout=300)
        outputs = result.stderr.split("@@CASE ")
        assert len(outputs) == len(cases) + 1, result.stderr[-3000:]
        assert outputs[1].startswith("0 66") and outputs[2].startswith("1 66"), result.stderr[-3000:]
        assert f"Cannot read {private / 'weights.safetensors'}: permission denied (m2i runs as uid {NOBODY})" \
            in outputs[0], outputs[0][-2000:]
        assert f"Cannot read {locked / 'inside.json'}" in outputs[1] or f"Cannot read {locked}" in outputs[1], \
            outputs[1][-2000:]
        assert outputs[3].startswith("2 73"), result.stderr[-3000:]  # a write outside the outputs stays 73
        assert f"Cannot write {closed / 'new.txt'}" in outputs[2], outputs[2][-2000:]
        assert "Traceback" not in result.stderr and "Cannot write" not in outputs[0] + outputs[1]
