"""The user documentation says what the code does: a lab follows it literally.

Checks that are cheap enough for every test run (no pipeline run):

- every ``--option`` the user pages name is an option of ``m2i``, ``m2i-models`` or ``m2i-simulate``, or of
  one of the other tools the pages show (sbatch, apptainer, docker, ...: listed below, so that a renamed or
  removed m2i option cannot hide among them);
- every ``m2i ...`` command line in a code block of the user pages parses with the real command line;
- every TOML example parses with the loader that reads it (config file or events map), and the native
  events example reads as the page says;
- the exit codes of the exit-code page are the ones the error classes and ``m2i --help`` use.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bids_m2i.cli.parser import expand_multi_value_args, make_command
from bids_m2i.config import read_config_file

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# the pages a user follows (the methods and benchmark pages name the options of benchmark scripts instead)
USER_PAGES = [REPO / "README.md"] + [DOCS / f"{name}.md" for name in (
    "index", "install", "usage", "hpc", "fmriprep", "events", "models", "outputs", "exit-codes",
    "troubleshooting", "containers", "simulator", "evaluation", "preprocessing")]

# Options of other tools shown on those pages (sbatch/sacct, apptainer, docker/buildah, pip, mkdocs,
# fMRIPrep). Not m2i's: an m2i option that is renamed must not be able to pass as one of these.
OTHER_TOOLS_OPTIONS = {
    "--account", "--array", "--cpus-per-task", "--dependency", "--format", "--gpus", "--gres", "--job-name",
    "--kill-on-invalid-dep", "--mem-per-cpu", "--output", "--parsable", "--partition", "--qos", "--test-only",
    "--time", "--bind", "--cleanenv", "--containall", "--env", "--fakeroot", "--no-home", "--nv", "--pwd",
    "--build-arg", "--entrypoint", "--http-proxy", "--read-only", "--rm", "--secret", "--tmpfs", "--user",
    "--index-url", "--strict", "--output-spaces", "--ignore",  # the last two: fMRIPrep's
}


def _m2i_command():
    return make_command(lambda *args: 0)


def _flags_of(command) -> set[str]:
    import click

    flags = set()
    for param in command.params:
        flags.update(o for o in param.opts + param.secondary_opts if o.startswith("-"))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            flags |= _flags_of(sub)
    return flags


def _all_our_flags() -> set[str]:
    from bids_m2i.models.cli import cli as models_cli
    from bids_m2i.simulate.cli import _command as simulate_command

    # click adds -h/--help outside the parameters
    return _flags_of(_m2i_command()) | _flags_of(models_cli) | _flags_of(simulate_command) | {"--help", "-h"}


def _code_blocks(text: str, language: str = r"[a-z]*") -> list[str]:
    """Bodies of the fenced blocks whose language matches (fences paired in order, whatever the language)."""
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.S | re.M)
    return [body for lang, body in blocks if re.fullmatch(language, lang)]


def test_every_option_named_in_the_user_pages_exists():
    ours = _all_our_flags()
    unknown = {}
    for page in USER_PAGES:
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", page.read_text(encoding="utf-8"))):
            if flag not in ours and flag not in OTHER_TOOLS_OPTIONS:
                unknown.setdefault(flag, []).append(page.name)
    assert unknown == {}, "options named in the docs that no m2i command has (renamed? removed?)"


def _m2i_command_lines() -> list[tuple[str, str]]:
    """``m2i ...`` lines of the code blocks (continuations joined), as (page, line)."""
    found = []
    for page in USER_PAGES:
        for block in _code_blocks(page.read_text(encoding="utf-8"), r"(?:bash|sh|)"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line.startswith("#"):
                    continue
                # m2i then a path, a placeholder or an option (not prose such as "m2i native format")
                match = re.search(r"(?:^|\s)m2i ([\"'/$A-Z-].*)$", line)
                if match and "[options]" not in line and "{participant,group}" not in line:
                    found.append((page.name, match.group(1)))
    return found


def _as_argv(rest: str) -> list[str]:
    # placeholders a reader replaces: [--space T1w] (optional part), "$label", "$@", ...
    rest = re.sub(r"\[([^\]]*)\]", r"\1", rest)
    argv = []
    for token in shlex.split(rest):
        if token == "$@":
            continue
        argv.append("1" if token.startswith("$") else token)
    return argv


def test_documented_m2i_command_lines_parse():
    lines = _m2i_command_lines()
    assert len(lines) >= 8, lines  # README, usage, hpc, fmriprep, events all show some
    command = _m2i_command()
    failures = []
    for page, rest in lines:
        argv = _as_argv(rest)
        try:
            command.main(expand_multi_value_args(argv), prog_name="m2i", standalone_mode=False)
        except Exception as exc:  # noqa: BLE001 - any refusal is the finding
            failures.append(f"{page}: m2i {rest}  ->  {exc}")
    assert failures == []


def test_permutations_zero_means_no_p_values_as_documented():
    """usage.md: `--permutations` ... (0: no p-values). The command line refused 0 (range x>=1)."""
    from bids_m2i.config import OPTION_BY_NAME

    assert "0: no p-values" in OPTION_BY_NAME["permutations"].help
    seen = {}

    def callback(bids_dir, output_dir, level, config_file, values, given):
        seen.update(values)
        return 0

    make_command(callback).main(["in", "out", "participant", "--permutations", "0"], prog_name="m2i",
                                standalone_mode=False)
    assert seen["permutations"] == 0


@pytest.mark.parametrize("name", ["nprocs", "omp_nthreads", "candidates", "permutations", "top_k_voxels", "seed",
                                  "dummy_scans"])
def test_config_file_and_command_line_take_the_same_integers(name, tmp_path):
    """usage.md: every option can be set in a config file. `candidates = 0` passed the config file while
    `--candidates 0` was refused; both now take the same range."""
    from bids_m2i.config import OPTION_BY_NAME
    from bids_m2i.errors import UsageError

    spec = OPTION_BY_NAME[name]
    flag = next(f for f in spec.cli_flags if f.startswith("--"))
    for value in (0, 1):
        path = tmp_path / f"{name}{value}.toml"
        path.write_text(f"[{spec.section}]\n{name} = {value}\n")
        try:
            read_config_file(path)
            in_file = True
        except UsageError:
            in_file = False
        try:
            make_command(lambda *args: 0).main(["in", "out", "participant", flag, str(value)], prog_name="m2i",
                                               standalone_mode=False)
            on_line = True
        except Exception:  # noqa: BLE001 - click's BadParameter
            on_line = False
        assert in_file == on_line, (name, value, in_file, on_line)
        assert in_file == (value >= (1 if name in ("nprocs", "omp_nthreads", "candidates") else 0))


def test_usage_config_example_is_a_valid_config_file(tmp_path):
    text = (DOCS / "usage.md").read_text(encoding="utf-8")
    blocks = _code_blocks(text, "toml")
    assert blocks
    for block in blocks:
        path = tmp_path / "config.toml"
        path.write_text(block)
        values = read_config_file(path)
        assert values  # every key known, every type right (UsageError otherwise)
    assert values["participant_label"] == ["01", "02"] and values["nprocs"] == 8


def test_events_map_examples_load(tmp_path):
    from bids_m2i.bids.events import load_events_map

    blocks = _code_blocks((DOCS / "events.md").read_text(encoding="utf-8"), "toml")
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"map{i}.toml"
        path.write_text(block)
        load_events_map(path)  # unknown key, wrong type, a value listed twice: UsageError


def test_native_events_example_reads_as_documented(tmp_path):
    """events.md's m2i native example: read by the `m2i` profile, roles and cues as the page says."""
    from bids_m2i.bids.events import events_to_trials

    text = (DOCS / "events.md").read_text(encoding="utf-8")
    section = text.split("## The m2i native events format", 1)[1]
    block = _code_blocks(section, "")[0]
    rows = [re.split(r"\s{2,}", line.strip()) for line in block.strip().splitlines()]
    path = tmp_path / "sub-01_task-imagery_run-01_events.tsv"
    path.write_text("\n".join("\t".join(row) for row in rows) + "\n")
    trials = events_to_trials(path, task="imagery", include_ignore=True)
    assert trials.attrs["rule"].startswith("profile m2i")
    assert list(trials["role"]) == ["ignore", "trial", "nuisance", "trial", "nuisance", "trial"]
    decoded = trials[trials["role"] == "trial"]
    assert list(decoded["condition"]) == ["perception", "imagery", "imagery"]
    assert list(decoded["cue"]) == ["none", "image", "text"]
    assert list(decoded["stim_file"]) == ["img-0042.png", "img-0042.png", "n/a"]
    assert decoded["cue_text"].iloc[-1] == "a blue teapot"


def test_exit_code_page_matches_the_code():
    from bids_m2i import errors
    from bids_m2i.cli.parser import EPILOG

    page = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", page, re.M)}
    raised = {cls.exit_code for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.M2IError)}
    assert raised <= documented, "an error class exits with a code the page does not list"
    in_help = {int(code) for code in re.findall(r"(\d+) [A-Za-z]", EPILOG.split("Documentation")[0])}
    assert in_help == documented, "m2i --help and docs/exit-codes.md list different codes"



def _documented_columns(page_text: str, file_marker: str) -> list[str]:
    """The space-separated column list in backticks on the outputs.md table row naming ``file_marker``."""
    row = next(line for line in page_text.splitlines() if line.startswith("|") and file_marker in line)
    content = row.split("|")[2]
    names = [c for span in re.findall(r"`([a-z_0-9 ]+)`", content) for c in span.split()]
    return list(dict.fromkeys(names))  # a column explained after the list is named twice


def test_outputs_page_names_the_files_and_columns_written(tiny_full_run):
    """docs/outputs.md against the participant outputs of the tiny preset (the session's shared run)."""
    import pandas as pd

    assert tiny_full_run["code"] == 0
    out = tiny_full_run["out"]
    page = (DOCS / "outputs.md").read_text(encoding="utf-8")
    func, decoding = out / "sub-01" / "func", out / "sub-01" / "decoding"

    def header(path):
        return list(pd.read_csv(path, sep="\t", nrows=0).columns)

    events = header(func / "sub-01_task-perception_desc-fithrfdenoiserr_events.tsv")
    assert _documented_columns(page, "task-T_desc-<method>_events.tsv") == events
    predictions = header(decoding / "sub-01_desc-predictions_table.tsv")
    documented = _documented_columns(page, "sub-01_desc-predictions_table.tsv")
    assert [c for c in documented if c in predictions] == predictions, (documented, predictions)
    metrics = header(decoding / "sub-01_desc-metrics_table.tsv")
    assert _documented_columns(page, "sub-01_desc-metrics_table.tsv")[:len(metrics)] == metrics
    confounds = header(func / "sub-01_task-perception_run-01_desc-confounds_timeseries.tsv")
    assert set(confounds) <= set(_documented_columns(page, "desc-confounds_timeseries.tsv"))
    # every file of the decoding folder is on the page (by its suffix after sub-01_)
    for path in decoding.iterdir():
        name = path.name.removeprefix("sub-01_").rsplit(".", 1)[0]
        if name.endswith("_model"):
            name = "_model"  # desc-<target><decoder>_model
        assert name in page, f"{path.name} is written but docs/outputs.md does not name it"


def test_usage_option_table_is_the_generated_one():
    """usage.md's option table is generated from the option table (`python -m bids_m2i.cli.docs`); an option
    added, renamed or given another default without regenerating it would leave the page behind."""
    from bids_m2i.cli.docs import BEGIN, END, options_markdown

    text = (DOCS / "usage.md").read_text(encoding="utf-8")
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == options_markdown(), "run `python -m bids_m2i.cli.docs docs/usage.md`"


def test_events_map_keys_table_matches_the_loader():
    """events.md's "All keys of a section" table names exactly the keys a map section may hold."""
    from bids_m2i.bids.events import _RULE_KEYS

    text = (DOCS / "events.md").read_text(encoding="utf-8")
    table = text.split("All keys of a section:", 1)[1].split("\n\n", 2)[1]
    documented = {key for row in table.splitlines()[2:] for key in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert documented == set(_RULE_KEYS) | {"profile"}  # profile: maps only, read before the section
