"""Base class of our nipype interfaces: thin glue around an engine, with our error framework.

A node that fails with an :class:`~bids_m2i.errors.M2IError` records the error (exit code, message) as a
JSON file in ``$M2I_ERROR_DIR`` before nipype turns it into a crash file; the runner reads these records to
exit with the right code and message instead of nipype's generic "did not execute cleanly".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, isdefined, traits

from ..errors import M2IError, error_from_oserror
from ..utils.fingerprint import code_fingerprint

ERROR_DIR_ENV = "M2I_ERROR_DIR"


def record_error(error: M2IError, where: str) -> None:
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    record = {
        "time": time.time(),
        "where": where,
        "class": type(error).__name__,
        "exit_code": error.exit_code,
        "message": error.message,
        "path": error.path,
        "hint": error.hint,
    }
    final = Path(folder) / f"{time.time_ns()}-{os.getpid()}.json"
    # written whole under a hidden name, then renamed: the run's main process may read the folder at any time
    partial = final.with_name(f".{final.name}.tmp")
    partial.write_text(json.dumps(record))
    os.replace(partial, final)


def read_error_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(Path(folder).glob("[!.]*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("time", 0))


def device_trait():
    """The ``device`` input of a node whose engine runs on torch (``cpu`` or ``cuda``, --device resolved).

    Not hashed: the device changes how a step computes, not what (CPU and GPU betas agree to a median per-voxel
    correlation of 1.0000, docs/benchmarks.md), as ``mem_gb`` changes the GLM's chunks. Hashed, a rerun with
    ``--device cpu`` after a step failed on the GPU (the hint of that error), or a job resumed on a CPU node
    after a GPU one, computed every finished step again: hours of motion correction and GLM.
    """
    return traits.Str("cpu", usedefault=True, nohash=True, desc="torch device of the engine (not hashed)")


class M2IInputSpec(BaseInterfaceInputSpec):
    """Inputs every m2i node has: the code's fingerprint, so that nipype's cache key covers the code."""

    code_version = traits.Str(desc="the m2i code that computes the node (set by M2IInterface; "
                                   "bids_m2i.utils.fingerprint): a work dir made by other code is recomputed")


class M2IInterface(SimpleInterface):
    """SimpleInterface whose ``_run`` (not ``_run_interface``) subclasses implement.

    Its input spec must derive from :class:`M2IInputSpec`: ``code_version`` is filled here, so a node's hash
    changes with the installed code (nipype hashes inputs only; ``bids_m2i.utils.fingerprint``)."""

    def __init__(self, *args, **inputs):
        super().__init__(*args, **inputs)
        if not isdefined(self.inputs.code_version):
            self.inputs.code_version = code_fingerprint()

    def _run_interface(self, runtime):
        try:
            self._run(runtime)
        except M2IError as error:
            record_error(error, type(self).__name__)
            raise
        except OSError as exc:
            error = error_from_oserror(exc)
            record_error(error, type(self).__name__)
            raise error from exc
        return runtime

    def _run(self, runtime):  # pragma: no cover - abstract
        raise NotImplementedError
