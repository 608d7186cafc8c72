"""Put results from the work dir into the derivatives dataset, under names built from entities.

A result is published once: the derivatives file is a hard link to the work-dir file when both folders are
on one file system (no second copy on disk, no time spent copying), a copy otherwise. Either way the file
appears atomically (temporary name, then rename), and a file already holding the same content is left
alone, so that a rerun leaves the outputs (and their modification times) untouched.

The compute nodes call :func:`publish_derivatives` at the end of their run (one node per run or session
instead of a sink node per file); :class:`DerivativesDataSink` remains for the few single files (the brain
mask).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ..bids.derivatives import derivative_path
from ..utils.atomic import atomic_path, write_text
from .base import M2IInterface


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
        return dst
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed there: one copy
            shutil.copyfile(src, tmp)
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
    from ..utils.atomic import _json_default

    return write_text_if_changed(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


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
        write_json_if_changed(sidecar, metadata)
        written.append(str(sidecar))
    return written


def publish_derivatives(base_directory: str, items: list[tuple[str, dict]]) -> list[str]:
    """Publish several results: ``items`` is a list of (work-dir path, keyword arguments of
    :func:`publish_derivative`). Returns every path written."""
    written: list[str] = []
    for src, spec in items:
        written += publish_derivative(src, base_directory, **spec)
    return written


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
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
