"""OpenMP threads sleep rather than spin while they wait (bids_m2i/utils/openmp.py).

With the default wait policy, 2 torch threads on 2 shared cores at load ~6 made the GLM engine 4x slower in
wall time and 4.4x in CPU time than with OMP_WAIT_POLICY=PASSIVE (the module's docstring has the figures). The
policy is read once, when torch's OpenMP runtime loads: these tests check that the app sets it before torch is
imported and keeps a value the user chose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys
from pathlib import Path
from bids_m2i.cli.runner import limit_threads
from bids_m2i.config import build_config
torch_before = "torch" in sys.modules
values = {"nprocs": 2, "omp_nthreads": 2}
config = build_config(Path(sys.argv[1]), Path(sys.argv[2]), "participant", values, set(values))
limit_threads(config)
print(json.dumps({"torch_before": torch_before, "policy": os.environ.get("OMP_WAIT_POLICY"),
                  "blocktime": os.environ.get("KMP_BLOCKTIME"), "threads": os.environ.get("OMP_NUM_THREADS")}))
"""


def _run_child(tmp_path, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.update(env_overrides)
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(bids), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_threads_are_limited_with_a_passive_wait_before_torch_loads(tmp_path):
    seen = _run_child(tmp_path)
    assert seen["torch_before"] is False  # else torch's OpenMP would have read the policy already
    assert seen == {"torch_before": False, "policy": "PASSIVE", "blocktime": "0", "threads": "2"}


@pytest.mark.parametrize("policy", ["ACTIVE", "passive"])
def test_a_wait_policy_the_user_set_is_kept(tmp_path, policy):
    seen = _run_child(tmp_path, OMP_WAIT_POLICY=policy, KMP_BLOCKTIME="200")
    assert seen["policy"] == policy and seen["blocktime"] == "200"


def test_set_openmp_wait_fills_only_what_is_missing():
    from bids_m2i.utils.openmp import OPENMP_WAIT, set_openmp_wait

    env = {"KMP_BLOCKTIME": "50"}
    set_openmp_wait(env)
    assert env == {"KMP_BLOCKTIME": "50", "OMP_WAIT_POLICY": OPENMP_WAIT["OMP_WAIT_POLICY"]}
