"""The top-level nipype workflow: one ``sub_<label>_wf`` per participant, each chaining the stages
(preprocessing or fMRIPrep inputs -> single-trial betas -> decoding) that ``--stop-after`` asks for, and the
participant report for whatever ran."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from ..config import Config
from ..errors import (BadDataError, InputMissingError, M2IError, NoDataSelected, OutputCreateError,
                      ProcessingIOError, UsageError, ValidationFailed)

LOGGER = logging.getLogger("m2i.workflow")

_ERROR_CLASSES = {cls.exit_code: cls for cls in (ValidationFailed, NoDataSelected, UsageError, BadDataError,
                                                 InputMissingError, OutputCreateError, ProcessingIOError)}


def node_name(text: str) -> str:
    """A valid nipype node name from a label like ``ses-01_task-a_run-1``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_")


def init_m2i_wf(config: Config, inputs: dict, work_dir: Path):
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name="m2i_wf", base_dir=str(work_dir))
    n_glm_nodes = sum(len(inputs[subject].task_sessions) for subject in inputs)
    for subject in sorted(inputs):
        workflow.add_nodes([init_single_subject_wf(config, inputs[subject], work_dir, n_glm_nodes=n_glm_nodes)])
    make_publishing_nodes(workflow)
    return workflow


def make_publishing_nodes(workflow) -> None:
    """Every plain node running one of our interfaces becomes a
    :class:`~bids_m2i.workflows.publishing.PublishingNode` (done here, once, rather than in each stage's
    builder, so that no stage can forget it): a rerun then restores the derivatives deleted since."""
    from nipype.pipeline import engine as pe

    from ..interfaces.base import M2IInterface
    from .publishing import PublishingNode

    for node in _all_nodes(workflow):
        if type(node) is pe.Node and isinstance(node.interface, M2IInterface):
            node.__class__ = PublishingNode


def init_single_subject_wf(config: Config, subject_inputs, work_dir: Path, n_glm_nodes: int = 1):
    """All stages of one participant."""
    from nipype.pipeline import engine as pe

    from .glm import init_single_trial_wf
    from .preproc import init_bold_preproc_wf, init_fmriprep_inputs_wf
    from .report import init_report_wf

    subject = subject_inputs.subject
    workflow = pe.Workflow(name=f"sub_{node_name(subject)}_wf")
    output_dir = str(config.output_dir.absolute())

    if config.resolved_space == "func":
        preproc_wf = init_bold_preproc_wf(config, subject_inputs, output_dir)
    else:
        preproc_wf = init_fmriprep_inputs_wf(config, subject_inputs, output_dir)
    workflow.add_nodes([preproc_wf])

    glm_wfs = []
    if config.stop_after in ("glm", "decode"):
        trials_dir = Path(work_dir) / "trials" / f"sub-{subject}"
        for task, session in subject_inputs.task_sessions:
            glm_wf = init_single_trial_wf(config, subject_inputs, task, session, output_dir, trials_dir,
                                          n_glm_nodes=n_glm_nodes)
            runs = subject_inputs.runs_of(task, session)
            for i, run in enumerate(runs):
                key = node_name(run.bold.key)
                workflow.connect([
                    (preproc_wf, glm_wf, [(f"outputnode.bold_{key}", f"inputnode.bold_{i}"),
                                          (f"outputnode.confounds_{key}", f"inputnode.confounds_{i}")]),
                ])
            workflow.connect(preproc_wf, "outputnode.brain_mask", glm_wf, "inputnode.brain_mask")
            glm_wfs.append((task, session, glm_wf))

    decoding_wf = None
    if config.stop_after == "decode" and glm_wfs:
        from .decoding import init_decoding_wf

        decoding_wf = init_decoding_wf(config, subject_inputs, [(t, s) for t, s, _ in glm_wfs], output_dir, work_dir)
        for i, (_task, _session, glm_wf) in enumerate(glm_wfs):
            workflow.connect([
                (glm_wf, decoding_wf, [("outputnode.statseries", f"inputnode.statseries_{i}"),
                                       ("outputnode.events", f"inputnode.events_{i}"),
                                       ("outputnode.ncsnr", f"inputnode.ncsnr_{i}")]),
            ])
        workflow.connect(preproc_wf, "outputnode.brain_mask", decoding_wf, "inputnode.brain_mask")

    init_report_wf(config, subject_inputs, output_dir, preproc_wf=preproc_wf,
                   glm_wfs=[w for _, _, w in glm_wfs], decoding_wf=decoding_wf, parent=workflow)
    return workflow


def cap_node_memory(workflow, memory_gb: float) -> None:
    """No node may ask nipype for more memory than --mem-gb: MultiProc would wait forever for it. The engines
    keep within the limit themselves (the GLM processes voxels in chunks) or say before starting that they
    cannot."""
    for node in _all_nodes(workflow):
        if getattr(node, "_mem_gb", None) is not None and node._mem_gb > memory_gb:
            node._mem_gb = float(memory_gb)


def _all_nodes(workflow):
    from nipype.pipeline import engine as pe

    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if isinstance(node, pe.Workflow):
            yield from _all_nodes(node)
        else:
            yield node


#: the command each of nipype's batch plugins submits its jobs with (it fails on the first submission without it)
BATCH_SUBMIT_COMMANDS = {"SLURM": "sbatch", "SLURMGraph": "sbatch", "SGE": "qsub", "SGEGraph": "qsub",
                         "PBS": "qsub", "PBSGraph": "qsub", "LSF": "bsub", "OAR": "oarsub",
                         "Condor": "condor_submit", "CondorDAGMan": "condor_submit_dag"}
def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_COUNT = (_is_count, "an integer of at least 1")
_TEXT = (lambda v: isinstance(v, str), "a string")
#: --plugin-args keys m2i knows the type of: (test, what the value must be)
PLUGIN_ARG_TYPES = {
    "n_procs": _COUNT, "maxtasksperchild": _COUNT, "max_jobs": _COUNT,
    "memory_gb": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"),
                  "a positive number"),
    "raise_insufficient": (lambda v: isinstance(v, bool), "true or false"),
    "sbatch_args": _TEXT, "qsub_args": _TEXT, "bsub_args": _TEXT,
}


def nipype_plugin_names() -> list[str]:
    """The execution plugins of the installed nipype (``MultiProc``, ``Linear``, ``SLURM``, ...)."""
    from nipype.pipeline import plugins

    return sorted(name[: -len("Plugin")] for name in dir(plugins)
                  if name.endswith("Plugin") and name != "Plugin" and not name.startswith("_"))


def check_plugin(config: Config) -> None:
    """``--plugin`` and ``--plugin-args`` checked before anything is written (exit 64). An unknown or
    mis-cased plugin, bad argument values or a batch plugin without its submit command failed in the scheduler
    (exit 1, "see the crash file", of which there was none)."""
    import shutil

    plugin = config.plugin or "MultiProc"
    known = nipype_plugin_names()
    if plugin not in known:
        same = [name for name in known if name.lower() == str(plugin).lower()]
        raise UsageError(f"--plugin {plugin}: nipype has no such plugin",
                         hint=f"did you mean {same[0]}?" if same else "nipype's plugins: " + ", ".join(known))
    command = BATCH_SUBMIT_COMMANDS.get(plugin)
    if command and shutil.which(command) is None:
        raise UsageError(f"--plugin {plugin} submits its jobs with {command}, which is not on this machine's PATH",
                         hint=f"run m2i where {command} is available (a cluster's login node), or drop --plugin "
                         "to run here (MultiProc)")
    plugin_settings(config)  # the arguments' errors now, not in the scheduler


def _read_plugin_args(raw: str) -> str:
    """``--plugin-args``: a JSON string or the path of a JSON file. A long JSON string (an ``sbatch_args`` of a
    few options) is not a possible file name (ENAMETOOLONG, exit 1): it is taken as JSON then."""
    try:
        is_file = Path(raw).is_file()
    except (OSError, ValueError):  # too long a name, a NUL byte
        is_file = False
    if not is_file:
        return raw
    from ..utils.text import read_settings_text

    return read_settings_text(Path(raw), "--plugin-args file")


def plugin_settings(config: Config) -> tuple[str, dict]:
    plugin = config.plugin or "MultiProc"
    args: dict = {}
    if plugin == "MultiProc":
        args = {"n_procs": config.n_procs, "memory_gb": config.memory_gb, "raise_insufficient": False}
    raw = config.plugin_args
    if raw:
        text = _read_plugin_args(raw)
        try:
            user_args = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"--plugin-args is neither a JSON string nor a JSON file: {raw[:200]}",
                             hint='e.g. --plugin-args \'{"maxtasksperchild": 1}\'') from exc
        if not isinstance(user_args, dict):
            raise UsageError("--plugin-args must be a JSON object")
        for key, value in user_args.items():
            test, expected = PLUGIN_ARG_TYPES.get(key, (None, None))
            if test is not None and not test(value):
                raise UsageError(f"--plugin-args: {key} must be {expected}, not {value!r}",
                                 hint='e.g. --plugin-args \'{"n_procs": 4}\' (JSON: numbers unquoted, true/false)')
        args.update(user_args)
    if plugin == "MultiProc" and int(args.get("n_procs", 1)) > config.n_procs:
        args["n_procs"] = config.n_procs  # never more processes than --nprocs
    return plugin, args


def run_participant_workflows(config: Config, inputs: dict, work_dir: Path) -> None:
    import os

    from nipype import config as nipype_config

    logs_dir = config.output_dir.absolute() / "logs"
    started = time.time()
    error_dir = run_error_dir(work_dir)
    os.environ["M2I_ERROR_DIR"] = str(error_dir)
    nipype_config.set("execution", "crashdump_dir", str(logs_dir))
    nipype_config.set("execution", "crashfile_format", "txt")
    nipype_config.set("execution", "stop_on_first_crash", "true")
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    # the scheduler sleeps this long between polls (nipype's default, 2 s, dominates small runs); batch
    # plugins (SLURM, SGE, ...) ask the cluster (squeue per pending job) at every poll, so they keep 2 s
    poll_seconds = 0.1 if (config.plugin or "MultiProc") in ("MultiProc", "Linear", "LegacyMultiProc") else 2.0
    nipype_config.set("execution", "poll_sleep_duration", str(poll_seconds))
    nipype_config.set("monitoring", "enabled", "false")
    # nipype's graph report (WORK_DIR/m2i_wf/index.html, d3.js, graph*.json): one set of fixed names that every
    # job of an array sharing -w rewrote at once, and a walk of the whole graph per run; nothing reads it
    nipype_config.set("execution", "create_report", "false")
    nipype_config.set("logging", "log_to_file", "false")

    workflow = init_m2i_wf(config, inputs, work_dir)
    cap_node_memory(workflow, config.memory_gb)
    workflow.config["execution"].update({
        "crashdump_dir": str(logs_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": True,
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": poll_seconds,
        "create_report": False,
    })
    plugin, args = plugin_settings(config)
    if plugin in ("MultiProc", "Linear", "LegacyMultiProc"):
        args.setdefault("status_callback", ProgressReporter())
    LOGGER.info("Running %d participant workflow(s) with nipype %s (%s)", len(inputs), plugin,
                ", ".join(f"{k}={v}" for k, v in args.items()))
    runner = multiproc_runner(args) if plugin == "MultiProc" else plugin
    try:
        workflow.run(plugin=runner, plugin_args=args)
    except M2IError:
        raise
    except Exception as exc:  # nipype reports node failures as RuntimeError
        raise _error_from_records(error_dir, logs_dir, exc, since=started,
                                  workflows=[f"sub_{node_name(subject)}_wf" for subject in inputs],
                                  work_dir=work_dir) from exc


def run_error_dir(work_dir: Path, now: float | None = None) -> Path:
    """The folder where this run's nodes record their errors: ``errors/<UTC second>-<pid>``.

    The jobs of a job array start in the same second on one -w: with the second alone in the name they
    shared the folder, and a failed job could report another job's error (message and exit code)."""
    import os

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return Path(work_dir) / "errors" / f"{stamp}-{os.getpid()}"


def own_crash_files(logs_dir: Path, since: float, workflows: list[str] | None) -> list[Path]:
    """nipype's crash files in the shared ``OUTPUT_DIR/logs`` written by this run: made since it started, by
    a node of one of its participant workflows (the first line names the node: ``Node: m2i_wf.sub_01_wf...``).
    Other jobs of a job array write their crash files into the same folder at the same time."""
    found = []
    for path in sorted(Path(logs_dir).glob("crash-*")):
        try:
            if path.stat().st_mtime < since - 1.0:  # 1 s: file systems with coarse timestamps
                continue
            with path.open(encoding="utf-8", errors="replace") as fh:
                first = fh.readline()
        except OSError:
            continue
        if workflows is None or any(f".{name}." in first for name in workflows):
            found.append(path)
    return found


def multiproc_runner(plugin_args: dict):
    """nipype's MultiProc plugin with the main process' heap frozen for the garbage collector while it runs.

    MultiProc calls ``gc.collect()`` every time it looks for jobs to submit and after every node it runs in
    the main process. With torch, numpy, pandas and nipype's execution graph in memory, one full collection
    took 0.15 s on an idle machine and 0.9 s on a busy one, and a run calls it more than once per node: the
    scheduler, not the work, was the cost of many-run datasets (issue 17: the main process of a 3,255-node
    run sat in ``_send_procs_to_workers``). ``gc.freeze()`` moves everything that exists when the run starts
    (libraries, the graph) out of the collector's reach; what the run creates is still collected."""
    import gc

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    class FrozenHeapMultiProcPlugin(MultiProcPlugin):
        _libraries_loaded = False

        def __init__(self, plugin_args=None):
            super().__init__(plugin_args=plugin_args)
            # the same pool (no worker is started before the first job), with workers that stop quietly on
            # SIGTERM/SIGINT (see _init_worker)
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool.shutdown(wait=False)
            self.pool = ProcessPoolExecutor(max_workers=self.processors, initializer=_init_worker,
                                            initargs=(self._cwd,),
                                            mp_context=mp.get_context(self.plugin_args.get("mp_context")))

        def run(self, graph, config, updatehash=False):
            gc.collect()
            gc.freeze()
            try:
                return super().run(graph, config, updatehash=updatehash)
            except BaseException:
                # SIGTERM/SIGHUP (raised here as _Terminated) or Ctrl-C reached the main process only (`kill PID`,
                # `docker stop`): the workers went on with their steps, published their results after
                # "Terminated" was logged, and the exit waited for them (85 s in a test). Stop them now.
                self._stop_workers()
                raise
            finally:
                gc.unfreeze()

        def _stop_workers(self):
            processes = dict(getattr(self.pool, "_processes", None) or {})
            # when the whole job was signalled (SLURM, Ctrl-C) the workers stop by themselves: give them a moment,
            # and signal only those still running (the main process alone was signalled)
            for process in processes.values():
                process.join(timeout=2)
            for process in processes.values():
                if process.is_alive():
                    process.terminate()
            self.pool.shutdown(wait=False, cancel_futures=True)
            for process in processes.values():
                process.join(timeout=10)

        def _async_callback(self, args):
            try:
                args.result()
            except BaseException as exc:  # any failure must reach the scheduler, or it waits for it forever
                # nipype's run_node itself failed in the worker: it could not store the node's result file and
                # then not read it back (a full work dir: ENOSPC, then FileNotFoundError). nipype's callback
                # raised, the task never got a result and MultiProc waited for it forever: the run hung until
                # the job's time limit. Recorded as the node's failure instead, with the whole chain (ENOSPC).
                import threading
                import traceback

                taskid = next((key for key, future in list(self._task_obj.items()) if future is args), None)
                if taskid is None and threading.current_thread() is threading.main_thread():
                    taskid = self._taskid  # done before nipype's _submit_job stored it: called from there
                if taskid is None:
                    raise
                self._taskresult[taskid] = {"result": None, "taskid": taskid,
                                            "traceback": traceback.format_exception(exc)}
                return
            super()._async_callback(args)

        def _submit_job(self, node, updatehash=False):
            # the first job to compute: load torch here, once, so that the workers (forked on demand) inherit
            # it instead of each loading it; a rerun that finds every step finished never loads it
            if not self._libraries_loaded:
                self._libraries_loaded = True
                _load_compute_libraries()
                gc.freeze()
            return super()._submit_job(node, updatehash=updatehash)

    return FrozenHeapMultiProcPlugin(plugin_args=plugin_args)


def _init_worker(cwd: str) -> None:
    """Start a MultiProc worker as nipype does, and make SIGTERM, SIGINT and SIGHUP end it with SystemExit.

    SLURM's time limit (and ``scancel``) sends SIGTERM to every process of the job, and Ctrl-C sends SIGINT to
    every process of the terminal's foreground group: the workers get the signal with the main process. An
    idle worker, waiting for its next job, then died with a traceback on the terminal (the main process's
    SIGTERM handler, inherited through fork, or KeyboardInterrupt). SystemExit ends an idle worker without
    one; a busy worker's node stops as before (nipype records it as failed; the rerun runs it again)."""
    import signal

    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
    signal.signal(signal.SIGTERM, _stop_worker)
    signal.signal(signal.SIGINT, _stop_worker)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup the workers go on, as the main one
        signal.signal(signal.SIGHUP, _stop_worker)


def _stop_worker(signum, frame):  # pragma: no cover - runs in the workers (tests/test_qa_run_lifecycle.py)
    import signal

    # once: a second signal (the main process stopping its workers after the whole job was signalled) must not
    # interrupt this exit halfway, e.g. while the worker hands a result to the pool
    for other in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if other is not None:
            signal.signal(other, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _load_compute_libraries() -> None:
    """torch with the thread counts that ``m2i`` set in the environment (OMP_NUM_THREADS...)."""
    import os

    from ..utils.process import gc_paused

    try:
        with gc_paused():  # the caller freezes the heap next
            import torch
    except ImportError:  # pragma: no cover
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


class ProgressReporter:
    """nipype status callback: one terminal line when a processing step starts or ends (not for the small
    bookkeeping nodes), so that a long run shows where it is."""

    _QUIET_PREFIXES = ("ds_", "pick_", "merge_", "collect_", "inputnode", "outputnode")

    def __init__(self):
        self.started: dict[str, float] = {}

    def __call__(self, node, status):
        name = node.name
        if name.startswith(self._QUIET_PREFIXES):
            return
        where = node.fullname.split(".")[1] if "." in node.fullname else ""
        if status == "start":
            self.started[node.fullname] = time.time()
            LOGGER.info("started  %s %s", where, name)
        elif status == "end":
            if node.fullname not in self.started:  # found finished in the work dir: not run again
                LOGGER.info("reused   %s %s (finished in an earlier run)", where, name)
                return
            elapsed = time.time() - self.started.pop(node.fullname)
            LOGGER.info("finished %s %s (%.1f s)", where, name, elapsed)
        elif status == "exception":
            LOGGER.info("failed   %s %s", where, name)


def _error_from_records(error_dir: Path, logs_dir: Path, exc: Exception, since: float = 0.0,
                        workflows: list[str] | None = None, work_dir: Path | None = None) -> M2IError:
    from ..interfaces.base import read_error_records

    records = read_error_records(error_dir) if error_dir.exists() else []
    if records:
        first = records[0]
        cls = _ERROR_CLASSES.get(first["exit_code"], M2IError)
        error = cls(first["message"], path=first.get("path"), hint=first.get("hint"))
        if cls is M2IError:
            error.exit_code = first["exit_code"]
        return error
    crash_files = own_crash_files(logs_dir, since, workflows)
    where = f" (crash file: {crash_files[-1]})" if crash_files else ""
    # an OSError raised by nipype itself (not by our interfaces) is only in the crash file's text
    text = crash_files[-1].read_text(errors="replace") if crash_files else ""
    if "No space left on device" in text or "[Errno 28]" in text or "Disk quota exceeded" in text:
        # nipype's own files (result, inputs and report files of each node) are all in the work dir
        folder = f" of the work dir {work_dir}" if work_dir is not None and str(work_dir) in text else ""
        return ProcessingIOError(f"No space left on the device{folder} while processing{where}",
                                 path=work_dir if folder else None,
                                 hint="free some disk space (or move --work-dir/OUTPUT_DIR to a larger disk) and "
                                 "rerun with the same work dir: finished steps are reused")
    if "[Errno 13]" in text or "[Errno 30]" in text:
        return OutputCreateError(f"Permission denied while writing during processing{where}",
                                 hint="check that the work dir and OUTPUT_DIR are writable")
    line = _last_error_line(text or str(exc))
    if any(sign in line for sign in _GPU_FAILURES):
        # the GPU, not the data: the same step runs on the CPU (results agree closely; docs/usage.md "On a GPU")
        return M2IError(f"A processing step failed on the GPU: {line}{where}",
                        hint="rerun with --device cpu and the same work dir (finished steps are reused), or free "
                        "the GPU's memory (nvidia-smi shows who holds it)")
    return M2IError(f"A processing step failed: {line}{where}",
                    hint="see the crash file and the log in OUTPUT_DIR/logs; rerun with the same work dir to "
                    "resume from the finished steps")


#: torch's messages when the GPU itself fails (memory, driver, a CUDA context that cannot start)
_GPU_FAILURES = ("CUDA out of memory", "OutOfMemoryError", "CUDA error", "CUDA driver", "re-initialize CUDA",
                 "CUBLAS_STATUS", "CUDNN_STATUS", "cusolver")


def _last_error_line(text: str) -> str:
    """The exception line of a traceback (``pandas.errors.EmptyDataError: No columns ...``): nipype's message
    holds the whole traceback, which must not reach the terminal (DESIGN.md: tracebacks go to the log)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "Traceback", "^", "~")) and ": " in line and not line.startswith("[Node]"):
            return line[:300]
    return lines[0][:300] if lines else "unknown error"


def collect_derivatives(workflow, outputnode, field: str = "derivatives") -> None:
    """Connect every file that ``workflow`` publishes (``out_file`` of its DerivativesDataSinks,
    ``out_derivatives`` of the nodes that publish their own results) to ``outputnode.<field>``, so that
    nodes downstream (the report) run only after every file of this stage is written."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from ..interfaces.derivatives import DerivativesDataSink

    sources = []
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if isinstance(node, pe.Workflow):
            continue
        if isinstance(node.interface, DerivativesDataSink):
            sources.append((node, "out_file"))
        elif "out_derivatives" in node.interface.output_spec().trait_names():
            sources.append((node, "out_derivatives"))
    merge = pe.Node(niu.Merge(max(1, len(sources))), name=f"collect_{field}", run_without_submitting=True)
    for i, (node, output) in enumerate(sources):
        workflow.connect(node, output, merge, f"in{i + 1}")
    workflow.connect(merge, "out", outputnode, field)
