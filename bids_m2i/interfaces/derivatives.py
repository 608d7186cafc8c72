"""Copy a result from the work dir into the derivatives dataset, under a name built from entities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ..bids.derivatives import derivative_path
from ..utils.atomic import atomic_path, write_json
from .base import M2IInterface


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
        out = derivative_path(inputs.base_directory, suffix=inputs.suffix, extension=inputs.extension,
                              datatype=inputs.datatype or None, **inputs.entities)
        with atomic_path(out) as tmp:
            shutil.copyfile(inputs.in_file, tmp)
        self._results["out_file"] = str(out)
        meta = {}
        if inputs.metadata_file:
            meta.update(json.loads(Path(inputs.metadata_file).read_text()))
        if inputs.metadata:
            meta.update(inputs.metadata)
        if meta and inputs.extension != ".json":
            name = out.name[: -len(inputs.extension)] + ".json"
            sidecar = out.with_name(name)
            write_json(sidecar, meta)
            self._results["out_meta"] = str(sidecar)
        return runtime
