"""nipype glue for the participant report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import File, TraitedSpec, traits

from .base import M2IInputSpec, M2IInterface


class _ReportInputSpec(M2IInputSpec):
    config_json = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    work_dir = traits.Str(mandatory=True)
    trials = File(desc="the participant's trials table (TSV)")
    run_names = traits.List(traits.Str(), desc="run names, in the order of summaries")
    run_trs = traits.List(traits.Float())
    summaries = traits.List(traits.Any(), desc="preprocessing summary JSON files, one per run")
    stages = traits.List(traits.Str(), mandatory=True)
    wait_for = traits.List(traits.Any(), desc="outputs of the stages (only to order the nodes)")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(desc="OUTPUT_DIR/sub-<label>.html")


class ParticipantReport(M2IInterface):
    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run(self, runtime):
        from ..config import config_from_json
        from ..reports.participant import build_participant_report

        config = config_from_json(self.inputs.config_json)
        summaries = []
        for i, path in enumerate(self.inputs.summaries or []):
            summary = json.loads(Path(path).read_text()) if path and Path(str(path)).exists() else {}
            if self.inputs.run_names:
                summary["name"] = self.inputs.run_names[i]
            if self.inputs.run_trs:
                summary["tr"] = self.inputs.run_trs[i]
            summaries.append(summary)
        trials = None
        if self.inputs.trials and Path(self.inputs.trials).exists():
            trials = pd.read_csv(self.inputs.trials, sep="\t", dtype=str, keep_default_na=False)
        out = build_participant_report(output_dir=config.output_dir.absolute(), bids_dir=config.bids_dir,
                                       subject=self.inputs.subject, config=config, run_summaries=summaries,
                                       trials=trials, work_dir=Path(self.inputs.work_dir), stages=self.inputs.stages)
        from .derivatives import note_written

        note_written(out)  # restored from a copy if deleted before a rerun that finds the report finished
        self._results["out_report"] = str(out)
