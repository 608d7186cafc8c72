"""The participant report node: runs last and reads what the stages wrote."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import config_to_json
from ..interfaces.report import ParticipantReport
from ..interfaces.derivatives import write_tsv_if_changed


def init_report_wf(config, subject_inputs, output_dir: str, *, preproc_wf, glm_wfs, decoding_wf, parent,
                   work_dir: Path | None = None, name: str = "report_wf"):
    workflow = pe.Workflow(name=name)
    work_dir = Path(work_dir or config.work_dir).absolute()
    stages = ["preprocessing" if config.resolved_space == "func" else "fMRIPrep inputs"]
    if glm_wfs:
        stages.append("single-trial betas")
    if decoding_wf is not None:
        stages.append("decoding")
    trials_file = ""
    if not subject_inputs.trials.empty:
        trials_file = str(write_tsv_if_changed(
            work_dir / "trials" / f"sub-{subject_inputs.subject}" / "all_trials.tsv", subject_inputs.trials))
    report = pe.Node(ParticipantReport(config_json=config_to_json(config), subject=subject_inputs.subject,
                                       work_dir=str(work_dir), stages=stages,
                                       run_names=[r.bold.path.name.split("_bold")[0] for r in subject_inputs.runs],
                                       run_trs=[r.tr for r in subject_inputs.runs]),
                     name="participant_report")
    if trials_file:
        report.inputs.trials = trials_file
    inputnode = pe.Node(niu.IdentityInterface(fields=["summaries", "wait_for"]), name="inputnode")
    workflow.connect([(inputnode, report, [("summaries", "summaries"), ("wait_for", "wait_for")])])

    waits = [(preproc_wf, "outputnode.derivatives")]
    waits += [(w, "outputnode.derivatives") for w in glm_wfs]
    if decoding_wf is not None:
        waits.append((decoding_wf, "outputnode.derivatives"))
    merge = pe.Node(niu.Merge(len(waits)), name="merge_wait_for", run_without_submitting=True)
    workflow.add_nodes([merge])
    for i, (source, field) in enumerate(waits):
        parent.connect(source, field, workflow, f"merge_wait_for.in{i + 1}")
    workflow.connect(merge, "out", inputnode, "wait_for")
    parent.connect(preproc_wf, "outputnode.summaries", workflow, "inputnode.summaries")
    return workflow
