"""Write the derivatives dataset (OUTPUT_DIR): names from entities, description, .bidsignore, sidecars.

File names are built from entities with the path patterns of our own pybids config (``data/pybids_m2i.json``,
which adds the ``stat`` and ``trial`` entities), never pasted together by hand: by :mod:`.names`, which reads
the patterns as pybids' ``build_path`` does (same names, checked by a test) without importing pybids. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputCreateError, UsageError
from ..utils import atomic

CODE_URL = "https://github.com/bids-m2i/bids_m2i"
BIDS_VERSION = "1.10.0"

# Everything we write that the BIDS specification does not define. The validator must report 0 errors on
# any output folder: a test runs it.
BIDSIGNORE = """\
# written by m2i: files and folders outside the BIDS specification
# (folders without a trailing slash: the validator matches them so)
logs
group
*.html
sub-*/figures
sub-*/decoding
sub-*/images
sub-*/func/*_desc-brain_mask.*
*_statseries.*
*_statmap.*
*_boldref.*
*_timeseries.*
*_xfm.*
*desc-*_events.*
"""


@lru_cache(maxsize=1)
def pybids_config() -> dict:
    text = resources.files("bids_m2i.data").joinpath("pybids_m2i.json").read_text(encoding="utf-8")
    return json.loads(text)


#: the entities that name the space of an output (fMRIPrep's template, cohort and resolution)
SPACE_ENTITY_KEYS = ("space", "cohort", "res")


def space_entities_of(path: str | os.PathLike) -> dict[str, str]:
    """The space entities (space, cohort, res) of an output's name; {} for the participant's own grid."""
    found = {}
    for part in Path(path).name.split("_"):
        key, _, value = part.partition("-")
        if key in SPACE_ENTITY_KEYS and value:
            found[key] = value
    return found


def space_name_part(space: dict | None) -> str:
    """``space-T1w_res-2`` for space entities (in BIDS order), ``""`` for the participant's own grid."""
    return "_".join(f"{key}-{space[key]}" for key in SPACE_ENTITY_KEYS if (space or {}).get(key))


def derivative_path(output_dir: Path | str, *, suffix: str, extension: str, datatype: str | None = None,
                    **entities: Any) -> Path:
    """The path of one output file, built from entities (``desc`` is always the last entity)."""
    from .names import build_name

    ents = {k: str(v) for k, v in entities.items() if v is not None and v != ""}
    if "subject" in ents:
        ents["subject"] = ents["subject"].removeprefix("sub-")
    ents.update(suffix=suffix, extension=extension if extension.startswith(".") else "." + extension)
    if datatype:
        ents["datatype"] = datatype
    relative = build_name(ents, pybids_config()["default_path_patterns"])
    if relative is None:
        raise ValueError(f"no output name pattern matches {ents}")  # a programming error, not user input
    return Path(output_dir) / relative


def container_info() -> dict[str, str] | None:
    """GeneratedBy.Container from the variables the container image sets (see Dockerfile)."""
    kind = os.environ.get("M2I_CONTAINER_TYPE")
    if not kind:
        return None
    info = {"Type": kind}
    if os.environ.get("M2I_CONTAINER_TAG"):
        info["Tag"] = os.environ["M2I_CONTAINER_TAG"]
    if os.environ.get("M2I_CONTAINER_URI"):
        info["URI"] = os.environ["M2I_CONTAINER_URI"]
    return info


def dataset_description(source_dir: Path) -> dict[str, Any]:
    generated_by: dict[str, Any] = {"Name": "m2i", "Version": __version__, "CodeURL": CODE_URL,
                                    "Description": "bids_m2i: reconstruction of seen and imagined images from fMRI"}
    container = container_info()
    if container:
        generated_by["Container"] = container
    source: dict[str, Any] = {"URL": Path(source_dir).resolve().as_uri()}
    try:
        source_description = json.loads((Path(source_dir) / "dataset_description.json").read_text("utf-8"))
    except (OSError, ValueError):
        source_description = {}
    if isinstance(source_description, dict):
        if source_description.get("DatasetDOI"):
            doi = str(source_description["DatasetDOI"])
            source["DOI"] = doi if doi.startswith("doi:") else f"doi:{doi.removeprefix('https://doi.org/')}"
        if source_description.get("Name"):
            name = source_description["Name"]
        else:
            name = Path(source_dir).name
    else:  # pragma: no cover
        name = Path(source_dir).name
    return {
        "Name": f"m2i reconstructions of {name}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
    }


def check_output_dir_is_ours(output_dir: Path) -> None:
    """OUTPUT_DIR must not be another dataset: one whose dataset_description.json names another pipeline, or a
    raw dataset. m2i rewrote their description, their .bidsignore and files in their sub-*/func (the simulator's
    true brain mask was replaced by m2i's), exit 0. A description that cannot be read as one is left to the
    steps that read it (the group level says what is missing)."""
    description = Path(output_dir) / "dataset_description.json"
    try:
        found = json.loads(description.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(found, dict) or not ({"Name", "BIDSVersion"} & set(found)):
        return
    generated = found.get("GeneratedBy")
    names = [g.get("Name") for g in generated if isinstance(g, dict)] if isinstance(generated, list) else []
    legacy = found.get("PipelineDescription")    # BIDS derivatives before 1.4 (e.g. fMRIPrep 1.x, 20.1)
    if not names and isinstance(legacy, dict) and legacy.get("Name"):
        names = [legacy["Name"]]
    # a derivative that names no generator cannot be told apart from ours (hand-made, an old or a trimmed
    # description): left alone. Refused: a raw dataset (DatasetType "raw", BIDS' default) and another generator
    if found.get("DatasetType") == "derivative" and (not names or names[0] == "m2i"):
        return
    what = (f"the outputs of {names[0]}" if names and names[0] else
            "a raw dataset" if found.get("DatasetType", "raw") == "raw" else "another derivatives dataset")
    raise UsageError(f"OUTPUT_DIR {output_dir} holds {what} ({found.get('Name') or 'unnamed'}), not m2i's: m2i "
                     "would overwrite its dataset_description.json and files", path=description,
                     hint="give m2i a folder of its own, e.g. BIDS_DIR/derivatives/m2i")


def _check_entry_kind(path: Path, folder: bool) -> None:
    """An entry m2i writes in OUTPUT_DIR that exists as the other kind (a folder named .bidsignore, a file
    named logs): exit 73 naming it, before any step (it was exit 1, or 73 naming OUTPUT_DIR itself)."""
    if not (path.exists() or path.is_symlink()) or path.is_dir() == folder:
        return
    kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file")
    raise OutputCreateError(f"Cannot write OUTPUT_DIR's {path.name}: {path} is {kind}, m2i writes {wanted} there",
                            path=path, hint="move it away, or choose another OUTPUT_DIR")


def initialize_output_dataset(output_dir: Path, source_dir: Path) -> None:
    """Create OUTPUT_DIR with its dataset_description.json and .bidsignore (idempotent)."""
    output_dir = Path(output_dir)
    _check_entry_kind(output_dir / "logs", folder=True)
    _check_entry_kind(output_dir / "dataset_description.json", folder=False)
    _check_entry_kind(output_dir / ".bidsignore", folder=False)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "logs").mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputCreateError(f"Cannot create the output folder {output_dir}: {exc.strerror}", path=output_dir,
                                hint="choose a folder you can write to (OUTPUT_DIR)") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputCreateError(f"The output folder {output_dir} is not writable", path=output_dir,
                                hint="choose a folder you can write to (OUTPUT_DIR)")
    description = output_dir / "dataset_description.json"
    new = dataset_description(source_dir)
    if description.exists():
        try:
            old = json.loads(description.read_text("utf-8"))
        except (OSError, ValueError):
            old = None
        if old == new:
            new = None
    if new is not None:
        atomic.write_json(description, new)
    bidsignore = output_dir / ".bidsignore"
    if not bidsignore.exists() or bidsignore.read_text("utf-8") != BIDSIGNORE:
        atomic.write_text(bidsignore, BIDSIGNORE)


def sidecar(sources: list[str | Path] | None = None, source_root: Path | None = None, **fields: Any) -> dict:
    """A JSON sidecar with ``Sources`` as BIDS URIs (``bids:raw:sub-01/func/...``) where possible."""
    out = dict(fields)
    if sources:
        uris = []
        for src in sources:
            src = Path(src)
            if source_root is not None:
                try:
                    uris.append("bids:raw:" + src.resolve().relative_to(Path(source_root).resolve()).as_posix())
                    continue
                except ValueError:
                    pass
            uris.append(str(src))
        out["Sources"] = uris
    return out
