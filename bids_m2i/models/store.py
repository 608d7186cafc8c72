"""Manifest of the models folder: write it, list it, check the folder against it.

The manifest (``manifest.json``) records, for every file of every component, its size, sha256 and (for
``.safetensors``) the shape of every tensor, plus where the component came from and its licence::

    {
      "format_version": 1,
      "tiny": false,
      "roles": {"clip_features": "open_clip/ViT-H-14", "clip_metric": "open_clip/ViT-L-14"},
      "components": {
        "unclip": {"kind": "unclip", "path": "unclip", "source": "...", "licence": "...",
                   "image_embed_dim": 1024, "tiny": false},
        "open_clip/ViT-H-14": {"kind": "open_clip", "path": "open_clip/ViT-H-14", "arch": "ViT-H-14",
                               "embed_dim": 1024, ...},
        "eval/alexnet": {"kind": "eval", "path": "eval/alexnet.safetensors", "network": "alexnet", ...}
      },
      "files": {"unclip/unet/diffusion_pytorch_model.safetensors":
                  {"component": "unclip", "bytes": 123, "sha256": "...", "shapes": {"conv_in.weight": [..]}}}
    }

``check_models`` raises :class:`~bids_m2i.errors.InputMissingError` (exit 66) when a needed file or
component is missing, and :class:`~bids_m2i.errors.BadDataError` (exit 65) when a file differs from the
manifest (size, sha256, tensor shapes), when a pickle (``.bin``, ``.pkl``, ``.pt``, ``.ckpt`` ...) or Python
file lies where only safetensors/JSON are expected, or when a pipeline config names classes we do not load.
When both kinds of problem occur, 65 wins (a corrupt folder is the more urgent news); every problem is
listed in the message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import BadDataError, InputMissingError, UsageError
from ..utils.atomic import write_json

log = logging.getLogger("m2i.models")

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
MODELS_DIR_ENV = "M2I_MODELS_DIR"

#: what ``check --for`` accepts
PURPOSES = ("clip", "unclip", "eval")

#: torchvision feature networks used by the evaluation metrics (MindEye's set)
EVAL_NETWORKS = ("alexnet", "inception_v3", "efficientnet_b1", "swav")

#: file suffixes that are Python pickles (executing code on load) or code: never allowed in the folder
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".tar", ".npz", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".so")

#: the only (library, class) pairs a saved unCLIP pipeline may name in model_index.json; anything else
#: would make diffusers import or build something we did not review
UNCLIP_ALLOWED_CLASSES = {
    "feature_extractor": {("transformers", "CLIPImageProcessor"), ("transformers", "CLIPImageProcessorFast")},
    "image_encoder": {("transformers", "CLIPVisionModelWithProjection")},
    # diffusers records pipeline-local modules by their sub-package name
    "image_normalizer": {("stable_diffusion", "StableUnCLIPImageNormalizer"), ("diffusers", "StableUnCLIPImageNormalizer")},
    "image_noising_scheduler": {("diffusers", "DDPMScheduler")},
    "tokenizer": {("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")},
    "text_encoder": {("transformers", "CLIPTextModel")},
    "unet": {("diffusers", "UNet2DConditionModel")},
    "scheduler": {
        ("diffusers", name)
        for name in (
            "DDIMScheduler",
            "DDPMScheduler",
            "PNDMScheduler",
            "EulerDiscreteScheduler",
            "EulerAncestralDiscreteScheduler",
            "DPMSolverMultistepScheduler",
            "LMSDiscreteScheduler",
            "HeunDiscreteScheduler",
            "UniPCMultistepScheduler",
        )
    },
    "vae": {("diffusers", "AutoencoderKL")},
}


# ----------------------------------------------------------------------------------------------------------
# locating the folder


def resolve_models_dir(models_dir: str | os.PathLike | None) -> Path:
    """Return the models folder from the option value, else ``$M2I_MODELS_DIR``.

    Raises
    ------
    UsageError
        Neither the option nor the environment variable is set (exit 64).
    InputMissingError
        The folder does not exist (exit 66).
    """
    value = models_dir if models_dir not in (None, "") else os.environ.get(MODELS_DIR_ENV)
    if not value:
        raise UsageError(
            "No models folder given",
            hint=f"pass --models-dir DIR or set ${MODELS_DIR_ENV}; create one with `m2i-models prepare DIR` "
            "(needs a network) or `m2i-models make-tiny DIR` (random weights, smoke tests only)",
        )
    path = Path(value).expanduser()
    check_not_a_file(path)
    if not path.is_dir():
        raise InputMissingError(
            f"Models folder not found: {path}",
            path=path,
            hint="create it with `m2i-models prepare DIR` or `m2i-models make-tiny DIR`",
        )
    return path


def check_not_a_file(path: Path) -> None:
    """A file given as the models folder (``--models-dir models/manifest.json``, the file the docs name) was 66
    "Models folder not found" for a path that is there: 64, naming the folder that holds it."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--models-dir {path} is a file, not a folder", path=path,
                         hint=f"give the models folder itself (the one holding manifest.json, e.g. {path.parent})")


# ----------------------------------------------------------------------------------------------------------
# permissions

UNREADABLE_HINT = ("make it readable by this user (e.g. `chmod -R a+rX` on the models folder, or ask its owner to "
                   "add you to its group), or point --models-dir to a copy of your own; m2i only reads it, so it "
                   "needs no recreating")


def check_readable(path: str | os.PathLike, root: str | os.PathLike | None = None, hint: str = UNREADABLE_HINT) -> None:
    """:func:`bids_m2i.utils.paths.check_readable` with the models folder's advice: a folder of another lab member
    gave 65 "does not match its manifest" / "not JSON" / "Not a readable safetensors file (No such file or
    directory)" with the advice to delete and recreate it."""
    from ..utils.paths import check_readable as check_path_readable

    check_path_readable(path, root, hint=hint)


# ----------------------------------------------------------------------------------------------------------
# describing files


def sha256_of(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (weights are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header only (no weights are loaded).

    Raises
    ------
    BadDataError
        The file is not a readable safetensors file.
    """
    from safetensors import safe_open

    check_readable(path)  # safetensors reports a file it may not open as "No such file or directory"
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in sorted(handle.keys())}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BadDataError(
            f"Not a readable safetensors file: {path} ({exc})",
            path=path,
            hint="the file is damaged or not safetensors; recreate the folder with `m2i-models prepare DIR`",
        ) from exc


def describe_file(path: Path, component: str) -> dict:
    """Manifest entry of one file: component, size, sha256 and (safetensors) tensor shapes."""
    entry = {"component": component, "bytes": path.stat().st_size, "sha256": sha256_of(path)}
    if path.suffix == ".safetensors":
        entry["shapes"] = safetensors_shapes(path)
    return entry


def _component_files(models_dir: Path, rel_path: str) -> list[Path]:
    root = models_dir / rel_path
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------
# writing and reading the manifest


def write_manifest(
    models_dir: str | os.PathLike,
    components: dict[str, dict],
    *,
    tiny: bool,
    roles: dict[str, str] | None = None,
) -> Path:
    """Hash every file of ``components`` and write ``manifest.json`` (atomically).

    Parameters
    ----------
    models_dir
        The models folder.
    components
        Component name -> description; each needs ``kind`` (``unclip``/``open_clip``/``eval``) and ``path``
        (relative to the folder, a sub-folder or a single file), plus ``source`` and ``licence``.
    tiny
        True for random-weight models (``make-tiny``): everything generated with them is noise.
    roles
        ``clip_features`` (the open_clip component whose image embeddings condition unCLIP) and
        ``clip_metric`` (the one used for the CLIP two-way metric), as component names.
    """
    models_dir = Path(models_dir)
    files: dict[str, dict] = {}
    for name, info in components.items():
        for kind_key in ("kind", "path", "source", "licence"):
            if kind_key not in info:
                raise ValueError(f"component {name} lacks {kind_key!r}")
        for path in _component_files(models_dir, info["path"]):
            if path.suffix in PICKLE_SUFFIXES or path.suffix in CODE_SUFFIXES:
                raise BadDataError(
                    f"Refusing to record a pickle/code file in the manifest: {path}",
                    path=path,
                    hint="convert it to safetensors and delete it",
                )
            files[path.relative_to(models_dir).as_posix()] = describe_file(path, name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tiny": bool(tiny),
        "roles": dict(roles or {}),
        "components": {name: dict(info, tiny=bool(tiny)) for name, info in sorted(components.items())},
        "files": dict(sorted(files.items())),
    }
    if tiny:
        manifest["warning"] = TINY_WARNING
    return write_json(models_dir / MANIFEST_NAME, manifest)


TINY_WARNING = "tiny random weights for smoke tests: every image generated with them is noise"


def read_manifest(models_dir: str | os.PathLike) -> dict:
    """Read and minimally validate ``manifest.json``.

    Raises
    ------
    InputMissingError
        The folder or its manifest does not exist (exit 66).
    BadDataError
        The manifest is not JSON or lacks required keys (exit 65).
    """
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_NAME
    check_readable(path, models_dir)
    if not path.is_file():
        raise InputMissingError(
            f"No {MANIFEST_NAME} in the models folder {models_dir}",
            path=path,
            hint="create the folder with `m2i-models prepare DIR` (needs a network) or "
            "`m2i-models make-tiny DIR` (random weights, smoke tests only)",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDataError(
            f"Cannot read {path}: {exc}", path=path, hint="recreate it with `m2i-models prepare DIR`"
        ) from exc
    missing = [key for key in ("tiny", "components", "files") if key not in manifest]
    if missing or not isinstance(manifest.get("components"), dict) or not isinstance(manifest.get("files"), dict):
        raise BadDataError(
            f"{path} is not a models manifest (missing or malformed: {', '.join(missing) or 'components/files'})",
            path=path,
            hint="recreate the folder with `m2i-models prepare DIR` or `m2i-models make-tiny DIR`",
        )
    problems = _manifest_problems(manifest)
    if problems:  # a hand-edited manifest stopped the run with exit 1 (KeyError, TypeError, ValueError)
        raise BadDataError(
            f"{path} is malformed: " + "; ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3
                                                                 else ""),
            path=path,
            hint="restore the manifest written by `m2i-models prepare DIR` / `make-tiny DIR` (or recreate the folder); "
            "do not edit it by hand",
        )
    return manifest


def _manifest_problems(manifest: dict) -> list[str]:
    """Entries of a manifest whose types the checks and loaders rely on, described."""
    problems = []
    roles = manifest.get("roles", {})
    if not isinstance(roles, dict) or not all(isinstance(v, (str, type(None))) for v in roles.values()):
        problems.append("'roles' must map role names to component names")
    for name, info in manifest["components"].items():
        rel = info.get("path") if isinstance(info, dict) else None
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(f"component {name!r} needs a 'path' inside the models folder")
    for rel, entry in manifest["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("component"), str):
            problems.append(f"file {rel!r} needs an object with its 'component'")
            continue
        if "bytes" in entry and (isinstance(entry["bytes"], bool) or not isinstance(entry["bytes"], int)):
            problems.append(f"file {rel!r}: 'bytes' must be a whole number")
        shapes = entry.get("shapes", {})
        if not isinstance(shapes, dict) or not all(
                isinstance(v, list) and all(isinstance(n, int) for n in v) for v in shapes.values()):
            problems.append(f"file {rel!r}: 'shapes' must map tensor names to lists of sizes")
    return problems


# ----------------------------------------------------------------------------------------------------------
# listing


def list_models(models_dir: str | os.PathLike) -> list[dict]:
    """One row per component: name, kind, tiny, number of files, bytes, source, licence, present.

    ``present`` is True when every manifest file of the component exists (no hashing: ``check`` does that).
    """
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    rows = []
    for name, info in manifest["components"].items():
        entries = {rel: e for rel, e in manifest["files"].items() if e.get("component") == name}
        rows.append(
            {
                "component": name,
                "kind": info.get("kind", "?"),
                "tiny": bool(info.get("tiny", manifest["tiny"])),
                "files": len(entries),
                "bytes": sum(int(e.get("bytes", 0)) for e in entries.values()),
                "source": info.get("source", "n/a"),
                "licence": info.get("licence", "n/a"),
                "present": all((models_dir / rel).is_file() for rel in entries),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------
# checking


@dataclass
class CheckResult:
    """What ``check_models`` found; ``missing`` and ``bad`` are human-readable problem lines."""

    models_dir: Path
    components: list[str] = field(default_factory=list)
    files_checked: int = 0
    missing: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tiny: bool = False

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad


def components_for(manifest: dict, purposes: Iterable[str]) -> tuple[list[str], list[str]]:
    """Component names needed for ``purposes``, and problems (lines) for purposes that name no component."""
    purposes = list(purposes)
    unknown = [p for p in purposes if p not in PURPOSES]
    if unknown:
        raise UsageError(
            f"Unknown purpose(s) for the models check: {', '.join(unknown)}",
            hint=f"use a comma-separated subset of {','.join(PURPOSES)}",
        )
    components = manifest["components"]
    roles = manifest.get("roles", {})
    needed: list[str] = []
    problems: list[str] = []

    def need(name: str | None, what: str, how: str) -> None:
        if name and name in components:
            if name not in needed:
                needed.append(name)
        else:
            problems.append(f"{what}: no component{f' {name!r}' if name else ''} in the manifest ({how})")

    if "clip" in purposes or "unclip" in purposes:
        need(roles.get("clip_features"), "CLIP image features", "`m2i-models prepare DIR` adds open_clip/ViT-H-14")
    if "unclip" in purposes:
        need("unclip", "unCLIP generation", "`m2i-models prepare DIR` adds unclip/")
    if "eval" in purposes:
        need(roles.get("clip_metric"), "CLIP metric", "`m2i-models prepare DIR` adds open_clip/ViT-L-14")
        for network in EVAL_NETWORKS:
            need(f"eval/{network}", f"{network} metric", "`m2i-models prepare DIR` adds eval/")
    return needed, problems


def check_models(
    models_dir: str | os.PathLike,
    purposes: Iterable[str] = PURPOSES,
    *,
    components: Iterable[str] | None = None,
    verify_hashes: bool = True,
    raise_on_error: bool = True,
) -> CheckResult:
    """Check that the components needed for ``purposes`` are present and match the manifest.

    Parameters
    ----------
    models_dir
        The models folder.
    purposes
        Subset of ``("clip", "unclip", "eval")``.
    verify_hashes
        Compute sha256 of every file (slow for real weights: minutes for ~10 GB); sizes and tensor shapes
        are always checked.
    components
        Check exactly these component names instead of those ``purposes`` need (used by the loaders).
    raise_on_error
        Raise (exit 66 for missing files, 65 for mismatches/pickles) instead of only returning the result.

    Returns
    -------
    CheckResult
    """
    models_dir = Path(models_dir)
    purposes = list(purposes)
    check_not_a_file(models_dir)
    if not models_dir.is_dir():
        raise InputMissingError(
            f"Models folder not found: {models_dir}",
            path=models_dir,
            hint="create it with `m2i-models prepare DIR` or `m2i-models make-tiny DIR`",
        )
    manifest = read_manifest(models_dir)
    result = CheckResult(models_dir=models_dir, tiny=bool(manifest["tiny"]))
    if components is None:
        needed, problems = components_for(manifest, purposes)
    else:
        needed = [name for name in components if name in manifest["components"]]
        problems = [f"{name}: no such component in the manifest" for name in components if name not in needed]
        purposes = ()
    result.components = needed
    result.missing.extend(problems)

    for name in needed:
        info = manifest["components"][name]
        root = models_dir / info["path"]
        check_readable(root, models_dir)
        if not root.exists():
            result.missing.append(f"{info['path']}: component {name} is missing")
            continue
        result.bad.extend(_forbidden_files(models_dir, root))
        entries = {rel: e for rel, e in manifest["files"].items() if e.get("component") == name}
        if not entries:
            result.bad.append(f"{info['path']}: the manifest lists no files for component {name}")
        for rel, entry in entries.items():
            result.files_checked += 1
            check_readable(models_dir / rel, models_dir)
            problem = _check_file(models_dir / rel, rel, entry, verify_hashes)
            if problem is None:
                continue
            (result.missing if problem[0] == "missing" else result.bad).append(problem[1])
        if info.get("kind") == "unclip":
            result.bad.extend(_check_unclip_index(root))

    result.bad.extend(_check_embedding_dims(manifest, purposes, needed))
    if result.tiny:
        result.warnings.append(TINY_WARNING)
    if raise_on_error:
        raise_for_result(result)
    return result


def raise_for_result(result: CheckResult) -> None:
    """Raise BadDataError (65) if anything is corrupt, else InputMissingError (66) if anything is missing."""
    if result.ok:
        return
    lines = result.bad + result.missing
    text = "\n    ".join(lines)
    if result.bad:
        raise BadDataError(
            f"The models folder {result.models_dir} does not match its manifest:\n    {text}",
            path=result.models_dir,
            hint="delete the files named above (never load pickles) and recreate the folder with "
            "`m2i-models prepare DIR` (or `m2i-models make-tiny DIR` for smoke tests)",
        )
    raise InputMissingError(
        f"The models folder {result.models_dir} lacks needed files:\n    {text}",
        path=result.models_dir,
        hint="run `m2i-models prepare DIR` on a machine with a network and copy the folder here "
        "(or `m2i-models make-tiny DIR` for smoke tests)",
    )


def _check_file(path: Path, rel: str, entry: dict, verify_hashes: bool) -> tuple[str, str] | None:
    if path.is_symlink() and not path.exists():
        # a Hugging Face cache snapshot or a DataLad clone copied without the files its links point to: "file
        # is missing" (copy the folder again) did not say why a file that `ls` shows was not found
        return "missing", (f"{rel}: a symbolic link to {os.readlink(path)}, which does not exist (copy the folder "
                           "with its links resolved: `cp -rL` or `rsync -aL`; in a DataLad dataset: `datalad get`)")
    if not path.is_file():
        return "missing", f"{rel}: file is missing"
    size = path.stat().st_size
    if "bytes" in entry and size != int(entry["bytes"]):
        return "bad", f"{rel}: {size} bytes, the manifest says {entry['bytes']} (incomplete copy or another file)"
    if "shapes" in entry:
        try:
            shapes = safetensors_shapes(path)
        except BadDataError as exc:
            return "bad", f"{rel}: {exc.message}"
        expected = {k: list(v) for k, v in entry["shapes"].items()}
        if shapes != expected:
            return "bad", f"{rel}: tensor shapes differ from the manifest ({_shape_difference(expected, shapes)})"
    # configs are cheap to parse, and a broken one of the manifest's size stopped the decoding stage hours later
    if path.suffix == ".json" and size < (1 << 24):
        try:
            json.loads(path.read_bytes().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return "bad", f"{rel}: not JSON ({exc})"
    if verify_hashes and sha256_of(path) != entry.get("sha256"):
        return "bad", f"{rel}: sha256 differs from the manifest (file changed or damaged)"
    return None


def _shape_difference(expected: dict, found: dict) -> str:
    absent = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    parts = []
    if changed:
        k = changed[0]
        parts.append(f"{k}: {found[k]} instead of {expected[k]}" + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))
    if absent:
        parts.append(f"{len(absent)} tensor(s) missing, e.g. {absent[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    return "; ".join(parts)


def _forbidden_files(models_dir: Path, root: Path) -> list[str]:
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    found = []
    for path in sorted(paths):
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            found.append(
                f"{path.relative_to(models_dir).as_posix()}: a pickle file where safetensors are expected "
                "(pickles can run code when loaded; m2i never loads them)"
            )
        elif suffix in CODE_SUFFIXES:
            found.append(f"{path.relative_to(models_dir).as_posix()}: code in the models folder (never executed)")
    return found


def _check_unclip_index(root: Path) -> list[str]:
    """model_index.json must name only the reviewed diffusers/transformers classes."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return []  # reported as a missing manifest file already
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{index_path.name}: not JSON ({exc})"]
    problems = []
    if index.get("_class_name") != "StableUnCLIPImg2ImgPipeline":
        problems.append(f"unclip/model_index.json: pipeline {index.get('_class_name')!r}, expected StableUnCLIPImg2ImgPipeline")
    for component, allowed in UNCLIP_ALLOWED_CLASSES.items():
        value = index.get(component)
        pair = tuple(value) if isinstance(value, list) and len(value) == 2 else None
        if pair not in allowed:
            problems.append(f"unclip/model_index.json: {component} is {value!r}; expected one of {sorted(allowed)}")
    return problems


def _check_embedding_dims(manifest: dict, purposes: Iterable[str], needed: list[str]) -> list[str]:
    """The CLIP features that condition unCLIP must have the embedding size unCLIP expects."""
    if "unclip" not in purposes:
        return []
    clip_name = manifest.get("roles", {}).get("clip_features")
    if clip_name not in needed or "unclip" not in needed:
        return []
    clip_dim = manifest["components"][clip_name].get("embed_dim")
    unclip_dim = manifest["components"]["unclip"].get("image_embed_dim")
    if clip_dim is not None and unclip_dim is not None and int(clip_dim) != int(unclip_dim):
        return [
            f"{clip_name} gives {clip_dim}-d image embeddings but unclip expects {unclip_dim}-d "
            "(use ViT-H-14 with SD 2.1 unCLIP-H, ViT-L-14 with unCLIP-L)"
        ]
    return []


# ----------------------------------------------------------------------------------------------------------
# metadata for outputs


def models_metadata(models_dir: str | os.PathLike, components: Iterable[str] | None = None) -> dict:
    """What an output's JSON sidecar says about the models behind it.

    Returns ``{"ModelsDir": str, "ModelsTiny": bool, "Models": {name: {"source", "licence"}}}`` plus
    ``"Warning"`` when the weights are tiny random ones.
    """
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    names = list(components) if components is not None else list(manifest["components"])
    meta = {
        "ModelsDir": str(models_dir),
        "ModelsTiny": bool(manifest["tiny"]),
        "Models": {
            name: {
                "source": manifest["components"].get(name, {}).get("source", "n/a"),
                "licence": manifest["components"].get(name, {}).get("licence", "n/a"),
            }
            for name in names
        },
    }
    if manifest["tiny"]:
        meta["Warning"] = "generated with tiny random weights: the image is noise"
    return meta
