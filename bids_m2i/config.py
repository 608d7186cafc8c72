"""One configuration object with sections, built from a single table of options.

The same table drives the command line (``cli/parser.py``), the TOML config file (``--config``) and the
resolved config written to ``OUTPUT_DIR/logs/config-<UTC timestamp>.toml``. Precedence:
command line > config file > defaults. A TOML key is the long option name with ``_`` for ``-``, either at
the top level or under its section (``[execution] nprocs = 4``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

# Choices shared with the engines (DESIGN.md method labels are the values without dashes).
GLM_METHODS = ("fithrf-denoise-rr", "fithrf", "lss", "lsa")
TARGETS = ("pixels", "clip", "clip-text", "text")
DECODERS = ("ridge", "mlp")
GENERATORS = ("pixels", "unclip")
STOP_AFTER = ("decode", "preproc", "glm")
DEVICES = ("auto", "cpu", "cuda")
SPACES = ("func", "T1w")  # the usual values; --space also takes any standard space label fMRIPrep writes
LSS_SPLITS = ("none", "condition")
GLM_NOISE_MODELS = ("auto", "ols", "ar1")
HRF_LIBRARIES = ("two-width", "broad", "medium", "narrow", "auto")


@dataclass(frozen=True)
class OptionSpec:
    """One user-facing option: its section, type, default and command-line spellings."""

    name: str  # python / TOML name (long option with _)
    section: str
    kind: str  # str | int | float | bool | path | choice | list | paths | choices
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)


OPTIONS: tuple[OptionSpec, ...] = (
    # --- BIDS selection ---
    OptionSpec("participant_label", "bids", "list", [], "Participant label(s) to process, several after one flag "
               "(`01 02`); `sub-` optional. Default: all.", ("--participant-label", "--participant_label"),
               metavar="LABEL"),
    OptionSpec("session_label", "bids", "list", [], "Session label(s); default all.",
               ("--session-label", "--session_label"), metavar="LABEL"),
    OptionSpec("task", "bids", "list", [], "Task label(s); default all.", ("--task", "--task-label"),
               metavar="TASK"),
    OptionSpec("bids_filter_file", "bids", "path", None, "JSON file in fMRIPrep's format "
               "(`{\"bold\": {...}}`) with extra BIDS entity filters; a list of such objects under `bold` selects "
               "their union; as in fMRIPrep, `\"*\"` is any value and `null` an absent entity.",
               ("--bids-filter-file", "--bids_filter_file"),
               metavar="FILE"),
    OptionSpec("derivatives", "bids", "paths", [], "fMRIPrep output folder (contains its "
               "dataset_description.json); repeatable. Uses its preprocessed BOLD, masks and confounds.",
               metavar="DIR"),
    OptionSpec("space", "bids", "str", None, "`func`: our own preprocessing onto the participant's grid "
               "(default without --derivatives); with --derivatives, any space fMRIPrep wrote: `T1w` (default), "
               "`MNI152NLin2009cAsym`, `MNI152NLin6Asym`, ..., with fMRIPrep's `:res-N` / `:cohort-N` to choose "
               "among several (see docs/fmriprep.md). Group level: the space of the participants' decoding "
               "outputs to summarise (no --derivatives needed).", metavar="SPACE"),
    OptionSpec("skip_bids_validation", "bids", "bool", False, "Do not run the BIDS validator on the input.",
               ("--skip-bids-validation", "--skip_bids_validator", "--skip-bids-validator")),
    OptionSpec("events_map", "bids", "path", None, "TOML file mapping events to trials per task "
               "(see docs/events.md). Default: built-in profiles + auto-detection.", metavar="FILE"),
    OptionSpec("print_trials", "bids", "bool", False, "Read the events, print the trials table summary per "
               "run (roles, conditions, counts, decoding split, rule used) and exit 0; writes nothing anywhere."),
    # --- execution ---
    OptionSpec("work_dir", "execution", "path", Path("work"), "Working directory (reused on rerun).",
               ("-w", "--work-dir", "--work_dir"), metavar="DIR"),
    OptionSpec("clean_workdir", "execution", "bool", False, "Empty the working directory before running (only "
               "a folder m2i made, never one holding BIDS_DIR or OUTPUT_DIR).",
               ("--clean-workdir", "--clean_workdir")),
    OptionSpec("nprocs", "execution", "int", None, "Maximum number of processes/threads (default: all cores; at most 4096).",
               ("--nprocs", "--n-cpus", "--n_cpus", "--nthreads")),
    OptionSpec("omp_nthreads", "execution", "int", 1, "Threads per process (torch, BLAS); the single-trial GLM "
               "fits its voxel groups on them side by side; preprocessing and the betas are the same for any count "
               "(the decoders' fits differ in the last float32 bits between counts).",
               ("--omp-nthreads", "--omp_nthreads")),
    OptionSpec("mem_gb", "execution", "float", None, "Memory limit in GB (default: all memory).",
               ("--mem-gb", "--mem_gb", "--mem")),
    OptionSpec("plugin", "execution", "str", "MultiProc", "nipype execution plugin (MultiProc, Linear, SLURM, ...).",
               metavar="NAME"),
    OptionSpec("plugin_args", "execution", "str", None, "nipype plugin arguments: a JSON string or a JSON file.",
               ("--plugin-args", "--plugin_args"), metavar="JSON"),
    OptionSpec("stop_after", "execution", "choice", "decode", "Last stage to run; the report is always written "
               "for what ran.", ("--stop-after", "--stop_after"), choices=STOP_AFTER),
    OptionSpec("device", "execution", "choice", "auto", "Torch device for the engines.", choices=DEVICES),
    OptionSpec("seed", "execution", "int", 0, "Random seed, 0 to 4294967295 (same inputs + seed + threads give "
               "identical files)."),
    OptionSpec("verbose", "execution", "count", 0, "More messages on the terminal (repeatable: -vv).",
               ("-v", "--verbose")),
    # --- preprocessing ---
    OptionSpec("fd_threshold", "preproc", "float", 0.5, "Framewise-displacement threshold (mm) drawn in the "
               "report and used to count high-motion volumes.", ("--fd-threshold", "--fd_threshold")),
    OptionSpec("dummy_scans", "preproc", "int", None, "Number of non-steady-state volumes at the start of each "
               "run (default: detected; fewer than each run's volumes).", ("--dummy-scans", "--dummy_scans")),
    # --- single-trial GLM ---
    OptionSpec("glm", "glm", "choice", "fithrf-denoise-rr", "Single-trial beta estimator.", choices=GLM_METHODS),
    OptionSpec("lss_split", "glm", "choice", "none", "With --glm lss: `condition` models the other trials per "
               "condition (LSS-N) instead of as one regressor (LSS-1).", ("--lss-split", "--lss_split"),
               choices=LSS_SPLITS),
    OptionSpec("glm_noise_model", "glm", "choice", "auto", "Temporal noise model of the single-trial GLM: `ar1` "
               "fits the betas after AR(1) prewhitening, `ols` as GLMsingle does; `auto`: `ar1` for the fitted-HRF "
               "methods, `ols` for lsa/lss (docs/glm.md).", ("--glm-noise-model", "--glm_noise_model"),
               choices=GLM_NOISE_MODELS),
    OptionSpec("hrf_library", "glm", "choice", "two-width", "HRF library of --glm fithrf / fithrf-denoise-rr: "
               "`two-width` (default: ten latencies, each in a medium and a wider shape, chosen per voxel), "
               "`broad` (the previous default), the narrower latency-ordered `medium` / `narrow`, or "
               "`auto` (one of broad, medium, narrow per session by cross-validation; docs/glm.md).",
               ("--hrf-library", "--hrf_library"), choices=HRF_LIBRARIES),
    OptionSpec("fraction_pooling", "glm", "float", None, "With --glm fithrf-denoise-rr: each voxel's ridge fraction "
               "is chosen on its own cross-validation loss plus this weight times the session's median loss "
               "curve (default 1; 0: its own loss alone; docs/glm.md, \"The ridge fraction pooled over the "
               "session\").", ("--fraction-pooling", "--fraction_pooling"), metavar="WEIGHT"),
    OptionSpec("zscore_betas", "glm", "bool", False, "z-score betas per voxel within session (NSD/MindEye).",
               ("--zscore-betas", "--zscore_betas")),
    # --- decoding ---
    OptionSpec("target", "decoding", "choices", ["pixels"], "Feature space(s) decoded from the betas; "
               "`pixels clip` enables the low-level start of unCLIP generation; `text` (TF-IDF of the captions, no "
               "weights) and `clip-text` decode into text and give unclip a retrieved caption as its prompt.", choices=TARGETS, metavar="TARGET"),
    OptionSpec("decoder", "decoding", "choice", "ridge", "Betas-to-features model.", choices=DECODERS),
    OptionSpec("generator", "decoding", "choice", "pixels", "Image generator (`pixels` needs `--target pixels`, "
               "`unclip` needs `--target clip`).",
               choices=GENERATORS),
    OptionSpec("captions", "decoding", "path", None, "Extra captions (one per line) for the caption bank of the "
               "text channel (`--target text`/`clip-text`), besides the training captions and cue texts.",
               metavar="FILE"),
    OptionSpec("candidates", "decoding", "int", 1, "unclip: images generated per item (each its own seed; 1 to 256); the "
               "one whose CLIP embedding is closest to the decoded embedding is kept (best of N)."),
    OptionSpec("permutations", "decoding", "int", 1000, "Permutations behind each metric's p-value (0: no "
               "p-values; at most 100,000); changing it reruns only the evaluation."),
    OptionSpec("average_repeats", "decoding", "bool", True, "Average the betas of a test stimulus' repeats "
               "before decoding.", ("--average-repeats/--no-average-repeats",)),
    OptionSpec("roi_mask", "decoding", "path", None, "Voxel-selection mask in the participant grid (NIfTI).",
               ("--roi-mask", "--roi_mask"), metavar="FILE"),
    OptionSpec("top_k_voxels", "decoding", "int", None, "Keep the k voxels with the highest ncsnr in the "
               "training data. Default: the count is chosen by cross-validation among nested halves of the mask "
               "(docs/decoding.md); 0 or a k larger than the mask keeps every voxel.",
               ("--top-k-voxels", "--top_k_voxels")),
    OptionSpec("finetune_imagery", "decoding", "bool", False, "Fine-tune the decoder on imagery-from-memory "
               "trials (Mind-to-Image recipe; cross-validated).", ("--finetune-imagery", "--finetune_imagery")),
    OptionSpec("models_dir", "decoding", "path", None, "Models folder (see docs/models.md); default "
               "$M2I_MODELS_DIR. Needed only for clip/unclip/feature metrics.", ("--models-dir", "--models_dir"),
               metavar="DIR"),
    OptionSpec("train_shared_decoder", "decoding", "bool", False, "Group level: train one shared-subject decoder "
               "per --target on every selected participant's betas (run `participant --stop-after glm` first); "
               "writes OUT/group/decoding/desc-shared<target>_model.safetensors (see docs/decoding.md).",
               ("--train-shared-decoder", "--train_shared_decoder")),
    OptionSpec("shared_imagery", "decoding", "choice", "ensemble", "Group level, with --train-shared-decoder: how a "
               "participant fitted on the shared decoder decodes imagery items. `map`: its map into the shared space, "
               "as for perception; `ensemble`: the mean of that map's and an own-data ridge's decoded patterns "
               "(fitted on the same trials; see docs/decoding.md). Recorded in the model file; held-out perception "
               "items always use the map.", ("--shared-imagery", "--shared_imagery"), choices=("map", "ensemble")),
    OptionSpec("shared_decoder", "decoding", "paths", [], "Participant level: decode with this shared decoder "
               "(one file per --target, from the group level), fitting only the participant's own map into its "
               "shared space on the participant's training trials.", ("--shared-decoder", "--shared_decoder"),
               metavar="FILE"),
    # --- report ---
    OptionSpec("report_stimuli", "report", "bool", True, "Show stimulus images in the report (turn off when "
               "their licence forbids copying).", ("--report-stimuli/--no-report-stimuli",)),
)

OPTION_BY_NAME = {spec.name: spec for spec in OPTIONS}
SECTIONS = tuple(dict.fromkeys(spec.section for spec in OPTIONS))


@dataclass
class Config:
    """The resolved configuration of one run: positional arguments + one value per option."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # name -> "cli" | "file" | "default"
    config_file: Path | None = None

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def section(self, name: str) -> dict[str, Any]:
        return {spec.name: self.values[spec.name] for spec in OPTIONS if spec.section == name}

    # --- derived settings -------------------------------------------------------------------------------
    @property
    def n_procs(self) -> int:
        return int(self.values["nprocs"] or available_cpus())

    @property
    def n_threads(self) -> int:
        """Threads for one process: never more than --nprocs."""
        return max(1, min(int(self.values["omp_nthreads"] or 1), self.n_procs))

    @property
    def memory_gb(self) -> float:
        return float(self.values["mem_gb"] or available_memory_gb())

    @property
    def resolved_space(self) -> str:
        """The space label of the outputs' names (``MNI152NLin2009cAsym`` for ``MNI152NLin2009cAsym:res-2``)."""
        return self.space_spec.split(":")[0]

    @property
    def space_entities(self) -> dict[str, str]:
        """The space entities of the outputs' names: ``space`` and fMRIPrep's ``cohort``/``res`` of the BOLD
        used (set by the fMRIPrep inputs once chosen, else from --space), so that two resolutions or cohorts
        of one template written into one OUTPUT_DIR do not overwrite each other; {} for ``func``."""
        if self.resolved_space == "func":
            return {}
        chosen = self.__dict__.get("input_space_entities")
        if chosen:
            return dict(chosen)
        label, *qualifiers = self.space_spec.split(":")
        found = dict(q.split("-", 1) for q in qualifiers if "-" in q)
        return {"space": label, **{k: found[k] for k in ("cohort", "res") if k in found}}

    @property
    def space_spec(self) -> str:
        """--space as given, with fMRIPrep's ``:res-N`` / ``:cohort-N`` qualifiers (which files to use)."""
        return self.values["space"] or ("T1w" if self.values["derivatives"] else "func")

    @property
    def resolved_models_dir(self) -> Path | None:
        value = self.values["models_dir"] or os.environ.get("M2I_MODELS_DIR")
        return Path(value).absolute() if value else None

    @property
    def glm_label(self) -> str:
        """Method label used in file names (DESIGN.md: no dashes)."""
        return self.values["glm"].replace("-", "")

    def to_toml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bids_dir": str(self.bids_dir),
            "output_dir": str(self.output_dir),
            "analysis_level": self.analysis_level,
        }
        for section in SECTIONS:
            table = {}
            for spec in OPTIONS:
                if spec.section != section:
                    continue
                value = self.values.get(spec.name)
                if spec.name == "nprocs":
                    value = self.n_procs
                elif spec.name == "omp_nthreads":
                    value = self.n_threads  # the effective count (capped by --nprocs)
                elif spec.name == "mem_gb":
                    value = round(self.memory_gb, 2)
                elif spec.name == "space":
                    value = self.space_spec
                elif spec.name == "models_dir":
                    value = self.resolved_models_dir
                if value is None:
                    continue  # TOML has no null: an absent key means "not set"
                table[spec.name] = _to_toml_value(value)
            out[section] = table
        return out


def _to_toml_value(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_to_toml_value(v) for v in value]
    return value


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def available_memory_gb() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        total = pages * page_size / 1024**3
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8.0
    # a cgroup limit (containers, SLURM) is lower than the machine's memory
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text) / 1024**3)
    return total


# --- config file -----------------------------------------------------------------------------------------
# what to do about a settings file (--config, --captions, --bids-filter-file, ...) this user may not read
SETTINGS_FILE_HINT = "make it readable by this user (`chmod a+r FILE`, or use a copy of your own); m2i only reads it"


# Integer options that need at least 1 (a count of things to use); the others take 0, which means something
# (--permutations 0: no p-values; --top-k-voxels 0: every voxel; --seed 0, --dummy-scans 0). The command line
# and the config file share this, so that a value one accepts the other does too.
INT_OPTIONS_FROM_ONE = ("nprocs", "omp_nthreads", "candidates")


#: Number options that take 0 (a weight that 0 switches off); the others must be above 0 (--mem-gb, thresholds).
FLOAT_OPTIONS_FROM_ZERO = ("fraction_pooling",)


def int_minimum(name: str) -> int:
    """Smallest value of the integer option ``name``."""
    return 1 if name in INT_OPTIONS_FROM_ONE else 0


#: Largest values of integer options that have one. ``seed``: numpy refuses a seed beyond 64 bits deep inside a
#: node (a traceback, exit 1), and the best-of-N candidates' seeds are seed + index; 32 bits leave room for them
#: ``nprocs``: a count beyond a C int stopped nipype's scheduler with an OverflowError (exit 1); no machine has
#: 4,096 cores for one participant. ``permutations``: each metric holds every permutation of its items in memory
#: (100,000 x 1,000 items is 0.8 GB; 10^20 grew until the machine ran out); p-values resolve 1e-5 at the bound.
#: ``candidates``: each is one unCLIP generation per item (MIRAGE keeps the best of 16). ``dummy_scans``: no run
#: is that long (the runs' own lengths are checked when they are read)
INT_MAXIMA = {"seed": 2**32 - 1, "nprocs": 4096, "permutations": 100_000, "candidates": 256,
              "dummy_scans": 100_000}


def int_maximum(name: str) -> int | None:
    """Largest value of the integer option ``name`` (None: no bound)."""
    return INT_MAXIMA.get(name)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into ``{option_name: value}``; unknown keys or wrong types -> UsageError."""
    from .utils import tomlread
    from .utils.text import read_settings_text

    try:
        raw = tomlread.loads(read_settings_text(path, "Config file"))
    except FileNotFoundError as exc:
        raise UsageError(f"Config file not found: {path}", path=path, hint="check the --config path") from exc
    except tomlread.TOMLDecodeError as exc:
        raise UsageError(f"Config file {path} is not valid TOML: {exc}", path=path,
                         hint="fix the line named (TOML: key = value, strings in quotes; see docs/usage.md) "
                         "or start from a logs/config-*.toml that m2i wrote") from exc
    except PermissionError as exc:  # an input this user may not read: 66, as for every other input
        from .errors import unreadable_input_error

        raise unreadable_input_error(path, hint=SETTINGS_FILE_HINT) from exc
    except OSError as exc:
        raise UsageError(f"Cannot read config file {path}: {exc.strerror}", path=path,
                         hint="check the --config path and its permissions") from exc

    flat: dict[str, Any] = {}
    positional = {"bids_dir", "output_dir", "analysis_level"}
    for key, value in raw.items():
        if isinstance(value, dict) and key in SECTIONS:
            for sub_key, sub_value in value.items():
                _add_config_value(flat, sub_key, sub_value, path, section=key)
        elif key in positional:
            continue  # written back for provenance; the command line decides these
        else:
            _add_config_value(flat, key, value, path)
    return flat


def _add_config_value(flat, key, value, path, section=None):
    name = key.replace("-", "_")
    spec = OPTION_BY_NAME.get(name)
    where = f"[{section}] {key}" if section else key
    if spec is None or (section is not None and spec.section != section):
        known = ", ".join(sorted(OPTION_BY_NAME))
        raise UsageError(f"Unknown key '{where}' in config file {path}", path=path,
                         hint=f"known keys: {known}")
    flat[name] = coerce_value(spec, value, origin=f"'{where}' in {path}")


def coerce_value(spec: OptionSpec, value: Any, origin: str) -> Any:
    """Check and convert a config-file value to the option's type."""

    def bad(expected):
        return UsageError(f"Wrong type for {origin}: expected {expected}, got {value!r}",
                          hint=f"see `m2i --help` for {spec.cli_flags[0]}")

    if spec.kind in ("bool",):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if spec.kind in ("int", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if value < int_minimum(spec.name):
            raise bad(f"an integer of at least {int_minimum(spec.name)}")
        maximum = int_maximum(spec.name)
        if maximum is not None and value > maximum:
            raise bad(f"an integer from {int_minimum(spec.name)} to {maximum}")
        return value
    if spec.kind == "float":
        # not `value <= 0` alone: nan and inf (TOML has both) pass it
        from_zero = spec.name in FLOAT_OPTIONS_FROM_ZERO
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value < 0 or (value == 0 and not from_zero)):
            raise bad("a (finite) number of at least 0" if from_zero else "a positive (finite) number")
        return float(value)
    if spec.kind in ("str",):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if spec.kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise bad("a path (a non-empty string)")
        return Path(value)
    if spec.kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            raise bad("one of " + ", ".join(spec.choices))
        return value
    if spec.kind in ("list", "paths", "choices"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        if spec.kind == "choices" and any(v not in spec.choices for v in items):
            raise bad("values among " + ", ".join(spec.choices))
        if spec.kind == "paths":
            if any(not v.strip() for v in items):
                raise bad("a list of paths (non-empty strings)")
            return [Path(v) for v in items]
        return list(items)
    raise AssertionError(spec.kind)  # pragma: no cover


def normalize_labels(name: str, labels: list[str]) -> list[str]:
    """Strip ``sub-``/``ses-``/``task-`` prefixes and a trailing ``/`` and split comma lists."""
    prefix = {"participant_label": "sub-", "session_label": "ses-", "task": "task-"}.get(name)
    out: list[str] = []
    for item in labels:
        for label in str(item).split(","):
            # `--participant-label sub-<TAB>` in the dataset folder: the shell completes the folder, `sub-01/`
            label = label.strip().rstrip("/")
            if prefix and label.startswith(prefix):
                label = label[len(prefix):]
            if label:
                out.append(label)
    return list(dict.fromkeys(out))


def check_space(space: str | None, derivatives) -> None:
    """``--space``: ``func``, or with --derivatives any BIDS space label fMRIPrep writes (T1w, MNI...)."""
    if space is None or space == "func":
        return
    # fMRIPrep's own spelling selects a resolution or cohort: MNI152NLin2009cAsym:res-2, MNIPediatricAsym:cohort-1
    if not re.fullmatch(r"[A-Za-z0-9]+(:(res|cohort)-[A-Za-z0-9]+)*", space) or space.split(":")[0] in (
            "fsnative", "fsaverage", "fsaverage5", "fsaverage6", "fsLR"):
        raise UsageError(f"--space {space!r} is not a volume space label",
                         hint="give the space entity of fMRIPrep's file names, e.g. T1w or MNI152NLin2009cAsym, "
                         "optionally with fMRIPrep's :res-N / :cohort-N (see docs/fmriprep.md)")
    if not derivatives:
        raise UsageError(f"--space {space} needs fMRIPrep's outputs (--derivatives FMRIPREP_DIR)",
                         hint="without --derivatives m2i preprocesses the data itself onto the participant's own "
                         "grid: leave --space out (or give --space func); see docs/fmriprep.md")


def defaults() -> dict[str, Any]:
    return {spec.name: (list(spec.default) if isinstance(spec.default, list) else spec.default) for spec in OPTIONS}


def build_config(bids_dir, output_dir, analysis_level, cli_values: dict[str, Any], cli_given: set[str],
                 config_file: Path | None = None) -> Config:
    """Merge defaults < config file < command line into a :class:`Config`."""
    values = defaults()
    sources = {name: "default" for name in values}
    if config_file is not None:
        for name, value in read_config_file(Path(config_file)).items():
            values[name] = value
            sources[name] = "file"
    for name in cli_given:
        values[name] = cli_values[name]
        sources[name] = "cli"
    for name in ("participant_label", "session_label", "task"):
        given = values[name]
        values[name] = normalize_labels(name, given)
        if given and not values[name]:
            # `--participant-label "$SUBJECT"` with the variable unset in one job of an array (or a bare `sub-`)
            # selected every participant: each such job processed the whole dataset
            option = "--" + name.replace("_", "-")
            example = {"participant_label": "01 (or sub-01)", "session_label": "01 (or ses-01)",
                       "task": "perception (or task-perception)"}[name]
            raise UsageError(f"{option} was given only empty labels ({', '.join(repr(str(v)) for v in given)})",
                             hint=f"give labels such as {example}, or leave {option} out to select all; in a job "
                             "script, check that the variable holding the label is set")
        bad = [label for label in values[name] if not re.fullmatch(r"[A-Za-z0-9]+", label)]
        if bad:
            # `0*`, `01/anat`, `SUB-01`: never a label (BIDS labels are letters and digits); such a label also went
            # into the log's file name (`..._sub-01/anat.log` made a folder in OUTPUT_DIR/logs)
            option = "--" + name.replace("_", "-")
            raise UsageError(f"{option} {' '.join(repr(label) for label in bad)}: not a BIDS label (labels are "
                             "letters and digits only)",
                             hint=f"give the label as in the file names (sub-01 -> 01), one or more after {option}; "
                             "wildcards are not expanded")
    # the group level reads only OUTPUT_DIR: --space there picks the participants' decoding outputs of that space
    check_space(values["space"], values["derivatives"] or analysis_level == "group")
    if values["glm"] == "lss" and values["glm_noise_model"] == "ar1":
        raise UsageError("--glm-noise-model ar1 is not implemented for --glm lss",
                         hint="use --glm-noise-model auto or ols with lss, or --glm lsa / fithrf-denoise-rr with ar1")
    if values["fraction_pooling"] and values["glm"] != "fithrf-denoise-rr":
        # the other methods have no ridge stage: the weight would be ignored without a word
        raise UsageError(f"--fraction-pooling needs --glm fithrf-denoise-rr (the ridge stage it acts on), not "
                         f"--glm {values['glm']}", hint="leave --fraction-pooling out, or use --glm fithrf-denoise-rr")
    # absolute paths: nipype runs every step in its own folder, where a relative path means something else
    for spec in OPTIONS:
        if spec.kind == "path" and values[spec.name] is not None:
            values[spec.name] = Path(values[spec.name]).absolute()
        elif spec.kind == "paths":
            values[spec.name] = [Path(v).absolute() for v in values[spec.name]]
    return Config(Path(bids_dir).absolute(), Path(output_dir).absolute(), analysis_level, values, sources,
                  None if config_file is None else Path(config_file))


def write_resolved_config(config: Config, logs_dir: Path, timestamp: str) -> Path:
    import tomli_w

    from .utils.atomic import write_text

    text = "# m2i resolved configuration (command line > config file > defaults)\n"
    text += tomli_w.dumps(config.to_toml_dict())
    return write_text(Path(logs_dir) / f"config-{timestamp}.toml", text)


__all__ = [
    "Config", "OptionSpec", "OPTIONS", "OPTION_BY_NAME", "SECTIONS", "build_config", "read_config_file",
    "write_resolved_config", "available_cpus", "available_memory_gb",
]


def config_to_json(config: Config) -> str:
    """Serialise a config for a nipype node input (nodes run in other processes)."""
    import json

    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    raw = {"bids_dir": str(config.bids_dir), "output_dir": str(config.output_dir),
           "analysis_level": config.analysis_level, "values": {k: plain(v) for k, v in config.values.items()}}
    if config.__dict__.get("input_space_entities"):  # the fMRIPrep variant chosen (e.g. res-2): the outputs' names
        raw["input_space_entities"] = dict(config.__dict__["input_space_entities"])
    return json.dumps(raw, sort_keys=True)


def config_from_json(text: str) -> Config:
    import json

    raw = json.loads(text)
    values = defaults()
    for name, value in raw["values"].items():
        spec = OPTION_BY_NAME.get(name)
        if spec is None:
            continue
        if value is not None and spec.kind == "path":
            value = Path(value)
        elif value is not None and spec.kind == "paths":
            value = [Path(v) for v in value]
        values[name] = value
    config = Config(Path(raw["bids_dir"]), Path(raw["output_dir"]), raw["analysis_level"], values)
    if raw.get("input_space_entities"):
        config.__dict__["input_space_entities"] = dict(raw["input_space_entities"])
    return config
