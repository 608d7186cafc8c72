"""Option files this user may not read (``--captions``, ``--bids-filter-file``, ``--events-map``,
``--roi-mask``, ``--config``) are 66 "Cannot read", naming the file or the folder that cannot be entered.

Before, a file in a folder this user may not enter was "file not found" (the folder hid it: ``exists()`` is
False there) and an unreadable ``--bids-filter-file`` stopped as a usage error (64) from the settings reader:
both send the user to check the spelling, not the permissions. Runs as uid 65534 (as root nothing is
unreadable); the run is stopped right after the start-up checks, the only part under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from helpers import DROP, folder_for_nobody, make_minimal_bids, open_to_everyone, python_for_nobody

REPO = Path(__file__).resolve().parents[1]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root to drop privileges to uid 65534")
PROBE = """
import json, site, sys
site.addsitedir({site!r}); sys.path.insert(0, {repo!r})
import bids_m2i.cli.runner as runner
from bids_m2i.cli.run import run_cli
checks = runner.check_paths
def checks_only(config):
    checks(config)
    raise SystemExit(0)
runner.check_paths = checks_only
for i, args in enumerate(json.loads(sys.argv[1])):
    try:
        code = run_cli(args)
    except SystemExit as stop:
        code = stop.code
    print(f"@@CASE {{i}} {{code}}", file=sys.stderr, flush=True)
"""


@NEEDS_ROOT
def test_unreadable_option_files_are_66_cannot_read():
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with folder_for_nobody("m2i-optfiles-") as base:
        bids = make_minimal_bids(base / "bids")
        private = base / "private.txt"
        private.write_text("a red apple\n")
        filters = base / "filters.json"
        filters.write_text('{"bold": {"task": "perception"}}')
        events_map = base / "events.toml"
        events_map.write_text("")
        settings = base / "m2i.toml"
        settings.write_text("")
        hidden = base / "lab-only"
        hidden.mkdir()
        (hidden / "captions.txt").write_text("a red apple\n")
        readable = base / "captions-ok.txt"
        readable.write_text("a red apple\n")
        open_to_everyone(base)
        for path in (private, filters, events_map, settings):
            path.chmod(0o600)
        hidden.chmod(0o700)
        common = ["participant", "--skip-bids-validation"]

        def case(i, *options):
            return [str(bids), str(base / f"out{i}"), *common, "-w", str(base / f"w{i}"), *options]

        cases = [case(0, "--captions", str(private)), case(1, "--bids-filter-file", str(filters)),
                 case(2, "--events-map", str(events_map)), case(3, "--captions", str(hidden / "captions.txt")),
                 case(4, "--captions", str(base / "no-such.txt")), case(5, "--captions", str(readable)),
                 case(6, "--config", str(settings))]
        script = PROBE.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO))
        result = subprocess.run([*DROP, python, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                                cwd=str(base), env={**os.environ, "HOME": "/nonexistent"}, timeout=300)
        outputs = result.stderr.split("@@CASE ")
        assert len(outputs) == len(cases) + 1, result.stderr[-3000:]
        codes = [int(outputs[i + 1].split()[1]) for i in range(len(cases))]
        assert codes == [66, 66, 66, 66, 66, 0, 66], result.stderr[-4000:]
        # outputs[i] holds case i's messages (case i's own "@@CASE" line starts outputs[i + 1])
        for i, named in enumerate([private, filters, events_map, hidden]):
            assert f"Cannot read {named}" in outputs[i], outputs[i][-2000:]
            assert "chmod a+r FILE" in outputs[i] and "DATASET" not in outputs[i], outputs[i][-2000:]
        assert "not found" in outputs[4] and "Cannot read" not in outputs[4], outputs[4][-2000:]
        assert f"Cannot read {settings}" in outputs[6], outputs[6][-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
