"""Issue 9, part 4: untrusted files. Weights load through safetensors or ``torch.load(weights_only=True)``
only; nothing in the input dataset or the models folder is executed.

The code scan reads the syntax tree of every module of ``bids_m2i`` (not a text grep: comments and docstrings
that *mention* ``torch.load`` are fine, a call without ``weights_only=True`` is not), and is itself tested on
a snippet that breaks every rule.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bids_m2i"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_loading(source: str, filename: str = "<snippet>") -> list[str]:
    """Problems found in one module's source: each names the line."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            problems.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                problems.append(f"{where} torch.load without weights_only=True")
            if name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where} calls {name}()")
            if name.endswith("import_module") and not (node.args and isinstance(node.args[0], ast.Constant)):
                problems.append(f"{where} imports a module named at run time")
            trust = _keyword(node, "trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                problems.append(f"{where} trust_remote_code is not False")
            if _is_true(_keyword(node, "allow_pickle")):
                problems.append(f"{where} allow_pickle=True")
            if name.endswith("from_pretrained") and not _is_true(_keyword(node, "use_safetensors")):
                problems.append(f"{where} from_pretrained without use_safetensors=True")
    return problems


def test_the_scan_catches_every_unsafe_pattern():
    snippet = "\n".join([
        "import pickle",
        "from joblib import load",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "eval(text)",
        "importlib.import_module(name)",
        "AutoModel.from_pretrained(path, trust_remote_code=True, use_safetensors=True)",
        "np.load(path, allow_pickle=True)",
        "Pipeline.from_pretrained(path)",
    ])
    problems = unsafe_loading(snippet)
    assert len(problems) == 9, problems
    safe = "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\nP.from_pretrained(p, use_safetensors=True)"
    assert unsafe_loading(safe) == []


def test_no_unsafe_loading_anywhere_in_the_package():
    problems = []
    for module in sorted(PACKAGE.rglob("*.py")):
        problems += unsafe_loading(module.read_text(), str(module.relative_to(PACKAGE.parent)))
    assert problems == []


def test_subprocesses_run_fixed_programs_only():
    """The package starts other programs (the validator, the fMRIPrep helpers, the CUDA probe of
    utils/torch_runtime.py) never through a shell."""
    for module in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                assert name not in ("os.system", "os.popen"), f"{module}:{node.lineno} {name}"
                if name.startswith("subprocess."):
                    assert not _is_true(_keyword(node, "shell")), f"{module}:{node.lineno} shell=True"


def test_code_planted_in_the_dataset_is_never_executed(tiny_dataset, tmp_path):
    """Python files in BIDS_DIR (its top, code/, stimuli/) that shadow the libraries m2i imports or Python's
    start-up hooks: run from inside the dataset, as users do, none of them runs."""
    bids = tmp_path / "bids"
    shutil.copytree(tiny_dataset, bids, ignore=shutil.ignore_patterns("derivatives"))
    marker = tmp_path / "executed"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).write_text(__file__)\n"
    for folder in (bids, bids / "code", bids / "stimuli", bids / "sub-01" / "func"):
        folder.mkdir(exist_ok=True)
        for name in ("sitecustomize.py", "usercustomize.py", "numpy.py", "pandas.py", "nibabel.py", "bids.py",
                     "click.py", "conftest.py", "setup.py"):
            (folder / name).write_text(payload)
    (bids / ".bidsignore").write_text((bids / ".bidsignore").read_text() + "\n*.py\ncode/\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    m2i = Path(sys.executable).parent / "m2i"
    command = [str(m2i)] if m2i.exists() else [sys.executable, "-c", "from bids_m2i.cli.run import main; main()"]
    result = subprocess.run([*command, ".", str(tmp_path / "out"), "participant", "--print-trials", "-w",
                             str(tmp_path / "work")], cwd=bids, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "perception" in result.stdout
    assert not marker.exists(), f"executed: {marker.read_text()}"


def test_stimulus_paths_are_confined_to_stimuli():
    from bids_m2i.bids.stimuli import normalize_stim_file
    from bids_m2i.errors import BadDataError

    for escaping in ["../secret.png", "/etc/passwd", "stimuli/../../x.png", "a/../../x.png", "C:/x.png",
                     "..\\..\\x.png"]:
        with pytest.raises(BadDataError):
            normalize_stim_file(escaping, "events.tsv")
    assert normalize_stim_file("stimuli/sub/../img-1.png") == "img-1.png"
