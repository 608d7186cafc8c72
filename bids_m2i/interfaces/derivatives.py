"""Put results from the work dir into the derivatives dataset, under names built from entities.

A result is published once: the derivatives file is a hard link to the work-dir file when both folders are
on one file system (no second copy on disk, no time spent copying), a copy otherwise. Either way the file
appears atomically (temporary name, then rename), and a file already holding the same content is left
alone, so that a rerun leaves the outputs (and their modification times) untouched.

The compute nodes call :func:`publish_derivatives` at the end of their run (one node per run or session
instead of a sink node per file); :class:`DerivativesDataSink` remains for the few single files (the brain
mask).

Every node that publishes also leaves a manifest in its work-dir folder (:func:`recording_publications`):
which work-dir file (or which sidecar text) each published path holds. nipype skips a finished node on a
rerun, so a derivative the user deleted or changed would never come back; the node, found finished, restores
them from the manifest instead (:func:`restore_publications`, called by ``workflows.publishing.PublishingNode``),
without computing anything again.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from nipype.interfaces.base import File, TraitedSpec, traits

from ..bids.derivatives import derivative_path
from ..utils.atomic import atomic_path, write_text
from .base import M2IInputSpec, M2IInterface

LOGGER = logging.getLogger("m2i.workflow")

MANIFEST_NAME = "_m2i_published.json"
STASH_FOLDER = "_m2i_published"


class _Recorder:
    """What one node run published: manifest entries, and the folder for copies of written files."""

    def __init__(self, node_dir: Path):
        self.node_dir = node_dir
        self.entries: list[dict] = []


_RECORDER: _Recorder | None = None  # the node running in this process (nipype runs one node per process)


@contextlib.contextmanager
def recording_publications(node_dir: str | os.PathLike):
    """Record every file published while the block runs; on success write the node's manifest."""
    global _RECORDER
    previous, recorder = _RECORDER, _Recorder(Path(node_dir))
    _RECORDER = recorder
    try:
        yield recorder
    finally:
        _RECORDER = previous
    if recorder.entries:
        write_json_if_changed(recorder.node_dir / MANIFEST_NAME, {"files": recorder.entries})


def _signature(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _note(entry: dict) -> None:
    if _RECORDER is not None:
        if "src" in entry:
            entry["linked"] = _same_inode(Path(entry["dst"]), entry["src"])
        _RECORDER.entries.append({**entry, **_signature(Path(entry["dst"]))})


def note_written(path: str | os.PathLike) -> None:
    """Record a file that a node wrote into OUTPUT_DIR itself (not published from a work-dir file): a copy
    goes to the node's folder, the source of any later restore."""
    if _RECORDER is None:
        return
    path = Path(path)
    stash = _RECORDER.node_dir / STASH_FOLDER / f"{len(_RECORDER.entries):04d}_{path.name}"
    stash.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, stash)
    _note({"dst": str(path), "src": str(stash)})


def _unchanged(dst: Path, entry: dict) -> bool:
    try:
        if _signature(dst) == {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}:
            return True  # as published (no need to read it)
    except OSError:
        return False
    if "text" in entry:
        try:
            return dst.read_text(encoding="utf-8") == entry["text"]
        except (OSError, UnicodeDecodeError):
            return False
    return _same_content(Path(entry["src"]), dst)


def _same_inode(a: Path, b: str | None) -> bool:
    try:
        return b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _source_intact(entry: dict) -> bool:
    """The work-dir file behind a published path still holds what was published. A hard-linked derivative
    edited in place (``echo ... > file``, ``pandas.to_csv(path)``) changes the work-dir file too: its size
    or mtime then differ from those recorded."""
    src = Path(entry["src"])
    if not src.exists():
        return False
    if entry.get("linked"):
        try:
            return _signature(src) == {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}
        except OSError:
            return False
    return True


def restore_publications(node_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Publish again what a finished node published, where the file is missing or no longer holds it.

    Returns (paths restored, paths that cannot be restored because their work-dir source is gone or was
    changed through a hard link: the node must run again). Cheap when nothing changed (a ``stat`` per file)."""
    manifest = Path(node_dir) / MANIFEST_NAME
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
    restored, stale = [], []
    for entry in entries:
        dst = Path(entry["dst"])
        if "src" in entry and not _source_intact(entry):
            stale.append(str(dst))
            continue
        if _unchanged(dst, entry):
            continue
        if "text" in entry:
            write_text(dst, entry["text"])
        else:
            publish_file(entry["src"], dst)
        if entry.get("mtime_ns") and not _same_inode(dst, entry.get("src")):
            # the published time again: nipype hashes file inputs by path and mtime, so the nodes after this
            # one (the report) see the same inputs as before and are not run again
            with contextlib.suppress(OSError):
                os.utime(dst, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        restored.append(str(dst))
    return restored, stale


def _same_content(src: Path, dst: Path) -> bool:
    try:
        if os.path.samefile(src, dst):
            return True
        return dst.stat().st_size == src.stat().st_size and filecmp.cmp(src, dst, shallow=False)
    except OSError:
        return False


def publish_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``dst`` becomes ``src``'s content: a hard link where possible, else a copy; unchanged if equal."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and _same_content(src, dst):
        _note({"dst": str(dst), "src": str(src)})
        return dst
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed there: one copy
            shutil.copyfile(src, tmp)
    _note({"dst": str(dst), "src": str(src)})
    return dst


def write_text_if_changed(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically unless the file already holds it (its mtime then stays, and nipype, which
    hashes file inputs by path and mtime, sees an unchanged input)."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    return write_text(path, text)


def write_json_if_changed(path: str | os.PathLike, obj: Any) -> Path:
    from ..utils.atomic import json_default

    return write_text_if_changed(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def publish_text(path: str | os.PathLike, text: str) -> Path:
    """A text file of the derivatives (a sidecar): written unless unchanged, and recorded for restoring."""
    path = write_text_if_changed(path, text)
    _note({"dst": str(path), "text": text})
    return path


def write_tsv_if_changed(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as BIDS TSV (as :func:`bids_m2i.utils.atomic.write_tsv`), only when it changed."""
    return write_text_if_changed(path, frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def publish_derivative(src: str | os.PathLike, base_directory: str, *, entities: dict, suffix: str,
                       extension: str, datatype: str = "", metadata: dict | None = None) -> list[str]:
    """Publish one result under its BIDS derivatives name (and its JSON sidecar when ``metadata``).

    Returns the paths written (the file, then the sidecar)."""
    out = derivative_path(base_directory, suffix=suffix, extension=extension, datatype=datatype or None,
                          **entities)
    publish_file(src, out)
    written = [str(out)]
    if metadata and extension != ".json":
        sidecar = out.with_name(out.name[: -len(extension)] + ".json")
        from ..utils.atomic import json_default

        publish_text(sidecar, json.dumps(metadata, indent=2, sort_keys=True, default=json_default) + "\n")
        written.append(str(sidecar))
    return written


def publish_derivatives(base_directory: str, items: list[tuple[str, dict]]) -> list[str]:
    """Publish several results: ``items`` is a list of (work-dir path, keyword arguments of
    :func:`publish_derivative`). Returns every path written."""
    written: list[str] = []
    for src, spec in items:
        written += publish_derivative(src, base_directory, **spec)
    return written


class _DerivativesDataSinkInputSpec(M2IInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to copy into the derivatives")
    base_directory = traits.Str(mandatory=True, desc="OUTPUT_DIR")
    entities = traits.Dict(mandatory=True, desc="subject, session, task, run, space, stat, trial, desc")
    suffix = traits.Str(mandatory=True)
    extension = traits.Str(mandatory=True)
    datatype = traits.Str("", usedefault=True, desc="func | decoding | images | figures")
    metadata = traits.Dict(desc="JSON sidecar content (written next to the file)")
    metadata_file = File(exists=True, desc="JSON file whose content is the sidecar (merged with metadata)")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="path in the derivatives dataset")
    out_meta = File(desc="its JSON sidecar, when written")


class DerivativesDataSink(M2IInterface):
    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run(self, runtime):
        inputs = self.inputs
        meta = {}
        if inputs.metadata_file:
            meta.update(json.loads(Path(inputs.metadata_file).read_text()))
        if inputs.metadata:
            meta.update(inputs.metadata)
        written = publish_derivative(inputs.in_file, inputs.base_directory, entities=inputs.entities,
                                     suffix=inputs.suffix, extension=inputs.extension, datatype=inputs.datatype,
                                     metadata=meta)
        self._results["out_file"] = written[0]
        if len(written) > 1:
            self._results["out_meta"] = written[1]
        return runtime


def derivatives_trait():
    """The ``derivatives`` input of a compute node that publishes its own results."""
    return traits.Dict(desc="{'base_directory': OUTPUT_DIR, 'files': {output name (or 'name.key' for a "
                       "dictionary output): publish_derivative keyword arguments, plus 'metadata_from': the "
                       "output holding a JSON sidecar to merge}}")


def publish_node_outputs(results: dict, derivatives: dict) -> list[str]:
    """Publish the outputs of a node named in its ``derivatives`` input; returns every path written."""
    if not derivatives:
        return []
    items = []
    for key, spec in derivatives["files"].items():
        name, _, entry = key.partition(".")
        src = results[name][entry] if entry else results[name]
        spec = dict(spec)
        meta_from = spec.pop("metadata_from", None)
        if meta_from:
            spec["metadata"] = {**json.loads(Path(results[meta_from]).read_text()), **(spec.get("metadata") or {})}
        items.append((src, spec))
    return publish_derivatives(derivatives["base_directory"], items)
