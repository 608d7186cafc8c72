"""nipype glue for the preprocessing engine (:mod:`bids_m2i.preproc`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, InputMultiObject, TraitedSpec, isdefined, traits

from .base import M2IInputSpec, M2IInterface, device_trait
from .derivatives import derivatives_trait, publish_node_outputs
from .images import load_bold, save_like


class _EstimateHeadMotionInputSpec(M2IInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw BOLD run")
    dummy_scans = traits.Int(-1, usedefault=True, desc="non-steady-state volumes; -1 = detect")
    n_threads = traits.Int(1, usedefault=True)
    device = device_trait()
    derivatives = derivatives_trait()


class _EstimateHeadMotionOutputSpec(TraitedSpec):
    out_transforms = File(desc="(T, 4, 4) pull transforms run reference -> volume, world mm (.npy)")
    out_params = File(desc="(T, 6) motion parameters (.npy)")
    out_boldref = File(desc="the run's reference volume")
    out_info = File(desc="JSON: non-steady-state volumes, warnings")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class EstimateHeadMotion(M2IInterface):
    """Rigid realignment of every volume of a run to the run's own reference."""

    input_spec = _EstimateHeadMotionInputSpec
    output_spec = _EstimateHeadMotionOutputSpec

    def _run(self, runtime):
        from ..preproc.nonsteady import detect_nonsteady_volumes
        from ..preproc.motion import estimate_motion
        from ..utils.atomic import save_npy, write_json

        data, affine, _ = load_bold(self.inputs.in_file)
        if self.inputs.dummy_scans >= 0:
            nonsteady = list(range(min(self.inputs.dummy_scans, data.shape[3] - 1)))
        else:
            nonsteady = [int(i) for i in detect_nonsteady_volumes(data)]
        steady = [i for i in range(data.shape[3]) if i not in set(nonsteady)]
        result = estimate_motion(data, affine, reference_volumes=steady, n_threads=self.inputs.n_threads,
                                 device=self.inputs.device)
        cwd = Path(runtime.cwd)
        self._results["out_transforms"] = str(save_npy(cwd / "transforms.npy", result.transforms))
        self._results["out_params"] = str(save_npy(cwd / "params.npy", result.params))
        self._results["out_boldref"] = str(save_like(result.reference, affine, cwd / "boldref.nii.gz"))
        self._results["out_info"] = str(write_json(cwd / "info.json", {
            "nonsteady_volumes": nonsteady, "warnings": list(result.warnings), "in_plane": bool(result.in_plane),
            "centre_mm": result.centre.tolist(),
        }))
        self._results["out_derivatives"] = publish_node_outputs(self._results, self.inputs.derivatives)


class _ParticipantGridInputSpec(M2IInputSpec):
    boldrefs = InputMultiObject(File(exists=True), mandatory=True, desc="each run's reference, run order")
    run_names = traits.List(traits.Str(), desc="each run's BOLD file name, run order (named in warnings)")
    n_threads = traits.Int(1, usedefault=True)
    device = device_trait()


class _ParticipantGridOutputSpec(TraitedSpec):
    out_reference = File(desc="participant reference (the first run's reference)")
    out_mask = File(desc="participant brain mask (all runs' references, voxels every run covers)")
    out_run_to_reference = traits.List(File(), desc="(4, 4) pull transforms participant ref -> run ref (.npy)")


class BuildParticipantGrid(M2IInterface):
    """Register every run's reference to the first run's (which defines the grid); one brain mask from all
    runs' references on that grid, limited to the voxels every run covers."""

    input_spec = _ParticipantGridInputSpec
    output_spec = _ParticipantGridOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        from ..preproc.grid import participant_brain_mask, references_on_grid, register_runs_to_first
        from ..utils.atomic import save_npy

        cwd = Path(runtime.cwd)
        images = [nib.load(path) for path in self.inputs.boldrefs]
        fixed_img = images[0]
        references = [np.asarray(img.dataobj, dtype=np.float32) for img in images]
        fixed = references[0]
        affines = [img.affine for img in images]
        compute = dict(n_threads=self.inputs.n_threads, device=self.inputs.device)
        matrices = register_runs_to_first(references, affines, device=self.inputs.device)
        on_grid, coverage = references_on_grid(references, affines, matrices, fixed_img.affine, fixed.shape,
                                               **compute)
        names = list(self.inputs.run_names) if isdefined(self.inputs.run_names) else None
        mask = participant_brain_mask(on_grid, coverage, run_names=names)
        if not mask.any():
            # said where it happens: with --stop-after preproc (a phantom's QA run) nothing else would, and the
            # carpet plots and DVARS of an empty mask are blank (the GLM stops on it with 65)
            logging.getLogger("m2i.preproc").warning(
                "The participant's brain mask has no voxel: the BOLD images show no brain against background (a "
                "phantom, data already masked to a constant, or a wrong scaling); carpet plots and DVARS are empty, "
                "and single-trial betas cannot be estimated")
        outputs = [str(save_npy(cwd / f"run{i:03d}_to_reference.npy", matrix)) for i, matrix in enumerate(matrices)]
        self._results["out_run_to_reference"] = outputs
        self._results["out_reference"] = str(save_like(fixed, fixed_img.affine, cwd / "reference.nii.gz"))
        self._results["out_mask"] = str(save_like(mask.astype(np.uint8), fixed_img.affine, cwd / "brain_mask.nii.gz",
                                                  dtype=np.uint8))


class _ResampleRunInputSpec(M2IInputSpec):
    in_file = File(exists=True, mandatory=True)
    transforms = File(exists=True, mandatory=True)
    run_to_reference = InputMultiObject(File(exists=True), mandatory=True)
    run_index = traits.Int(mandatory=True, desc="which of run_to_reference is this run's")
    reference = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    info = File(exists=True, mandatory=True)
    tr = traits.Float(mandatory=True)
    fd_threshold = traits.Float(0.5, usedefault=True)
    n_threads = traits.Int(1, usedefault=True)
    device = device_trait()
    derivatives = derivatives_trait()


class _ResampleRunOutputSpec(TraitedSpec):
    out_file = File(desc="BOLD on the participant grid")
    out_confounds = File(desc="confounds table (TSV)")
    out_confounds_meta = File(desc="confounds sidecar (JSON)")
    out_figures = traits.Dict(desc="figure name -> SVG path")
    out_summary = File(desc="JSON: volumes, non-steady-state, FD statistics")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class ResampleRun(M2IInterface):
    """Resample a run once (raw -> participant grid) and compute its confounds and figures."""

    input_spec = _ResampleRunInputSpec
    output_spec = _ResampleRunOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        from ..preproc import figures
        from ..preproc.confounds import compute_confounds
        from ..preproc.resample import resample_to_grid
        from ..preproc.transforms import compose_transforms, params_from_matrix
        from ..utils.atomic import write_json, write_tsv

        cwd = Path(runtime.cwd)
        data, affine, _ = load_bold(self.inputs.in_file)
        per_volume = np.load(self.inputs.transforms)
        run_to_ref = np.load(self.inputs.run_to_reference[self.inputs.run_index])
        reference = nib.load(self.inputs.reference)
        mask = np.asarray(nib.load(self.inputs.mask).dataobj) > 0
        info = json.loads(Path(self.inputs.info).read_text())
        transforms = compose_transforms(per_volume, run_to_ref)
        # a volume that moved pushes the voxels at the edge of the field of view (first/last slices of a slab)
        # out of it: filled with 0 they kept their place in the brain mask (built from the runs' references)
        # and got betas of thousands of % (QA pass 26). The nearest edge value stands in for them within the
        # voxels the run covers (its reference, as the mask); the grid beyond stays 0
        resampled = resample_to_grid(data, affine, transforms, reference.affine, reference.shape[:3],
                                     n_threads=self.inputs.n_threads, device=self.inputs.device, fill=None)
        covered = np.isfinite(resample_to_grid(np.ones(data.shape[:3], dtype=np.float32), affine, run_to_ref,
                                               reference.affine, reference.shape[:3], n_threads=self.inputs.n_threads,
                                               device=self.inputs.device, fill=np.nan))
        resampled[~covered] = 0.0
        # int16 with a per-run scl_slope/scl_inter (the raw input's type): half the bytes of float32 and
        # compressible; the rounding error (at most slope/2, ~range/131,000) is thousands of times below the
        # BOLD noise (docs/benchmarks.md, tests/test_preproc_quantise.py)
        self._results["out_file"] = str(save_like(resampled, reference.affine, cwd / "bold_preproc.nii.gz",
                                                  tr=self.inputs.tr, stored_dtype=np.int16))
        # motion parameters relative to the participant reference (what the user sees and FD uses)
        from ..preproc.transforms import grid_centre

        params = params_from_matrix(transforms, grid_centre(reference.affine, reference.shape))
        confounds, meta = compute_confounds(params, resampled, mask)
        self._results["out_confounds"] = str(write_tsv(cwd / "confounds.tsv", confounds))
        meta = dict(meta)
        meta["NonSteadyStateVolumes"] = {"Description": "volumes at the start of the run not yet at steady "
                                         "state (detected or --dummy-scans); left out of the GLM",
                                         "Volumes": info.get("nonsteady_volumes", [])}
        self._results["out_confounds_meta"] = str(write_json(cwd / "confounds.json", meta))
        fd = confounds["framewise_displacement"].to_numpy(dtype=float)
        traces = {"FD": fd, "std DVARS": confounds["std_dvars"].to_numpy(dtype=float)}
        figs = {
            "motion": figures.plot_motion_traces(params, cwd / "motion.svg", tr=self.inputs.tr),
            "fd": figures.plot_framewise_displacement(fd, cwd / "fd.svg", threshold=self.inputs.fd_threshold,
                                                      tr=self.inputs.tr),
            "carpet": figures.plot_carpet(resampled, mask, cwd / "carpet.svg", tr=self.inputs.tr, confounds=traces),
            "beforeafter": figures.plot_std_before_after(figures.temporal_std(data), figures.temporal_std(resampled),
                                                         cwd / "beforeafter.svg"),
        }
        self._results["out_figures"] = {k: str(v) for k, v in figs.items()}
        fd_valid = fd[np.isfinite(fd)]
        self._results["out_summary"] = str(write_json(cwd / "summary.json", {
            "n_volumes": int(data.shape[3]),
            "nonsteady_volumes": info.get("nonsteady_volumes", []),
            "fd_mean": float(fd_valid.mean()) if fd_valid.size else 0.0,
            "fd_max": float(fd_valid.max()) if fd_valid.size else 0.0,
            "n_high_motion": int((fd_valid > self.inputs.fd_threshold).sum()),
            "fd_threshold": self.inputs.fd_threshold,
            "warnings": info.get("warnings", []) + ([meta["MotionImplausible"]["Description"]]
                                                    if "MotionImplausible" in meta else []),
        }))
        if "MotionImplausible" in meta:
            logging.getLogger("m2i.preproc").warning("%s: %s", Path(self.inputs.in_file).name,
                                                     meta["MotionImplausible"]["Description"])
        self._results["out_derivatives"] = publish_node_outputs(self._results, self.inputs.derivatives)
