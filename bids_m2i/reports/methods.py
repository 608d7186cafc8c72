"""Methods text and citations generated from what ran (the options and the software versions)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from .. import __version__

CITATIONS = {
    "bids": "Gorgolewski KJ et al. (2016). The brain imaging data structure. Scientific Data 3:160044.",
    "bidsapps": "Gorgolewski KJ et al. (2017). BIDS apps. PLoS Comput Biol 13(3):e1005209.",
    "nipype": "Gorgolewski K et al. (2011). Nipype: a flexible, lightweight and extensible neuroimaging data "
              "processing framework in Python. Front Neuroinform 5:13.",
    "pybids": "Yarkoni T et al. (2019). PyBIDS: Python tools for BIDS datasets. JOSS 4(40):1294.",
    "nilearn": "Abraham A et al. (2014). Machine learning for neuroimaging with scikit-learn. Front Neuroinform 8:14.",
    "fd": "Power JD et al. (2012). Spurious but systematic correlations in functional connectivity MRI networks "
          "arise from subject motion. NeuroImage 59(3):2142-2154.",
    "dvars": "Nichols TE (2017). Notes on creating a standardized version of DVARS. arXiv:1704.01469.",
    "glmsingle": "Prince JS et al. (2022). Improving the accuracy of single-trial fMRI response estimates using "
                 "GLMsingle. eLife 11:e77599.",
    "fracridge": "Rokem A, Kay K (2020). Fractional ridge regression: a fast, interpretable reparameterization of "
                 "ridge regression. GigaScience 9(12):giaa133.",
    "lss": "Mumford JA et al. (2012). Deconvolving BOLD activation in event-related designs for multivoxel pattern "
           "classification analyses. NeuroImage 59(3):2636-2643.",
    "nsd": "Allen EJ et al. (2022). A massive 7T fMRI dataset to bridge cognitive neuroscience and artificial "
           "intelligence. Nat Neurosci 25:116-126.",
    "fmriprep": "Esteban O et al. (2019). fMRIPrep: a robust preprocessing pipeline for functional MRI. "
                "Nat Methods 16:111-116.",
    "braindiffuser": "Ozcelik F, VanRullen R (2023). Natural scene reconstruction from fMRI signals using generative "
                     "latent diffusion. Sci Rep 13:15666.",
    "mindeye": "Scotti PS et al. (2023). Reconstructing the mind's eye: fMRI-to-image with contrastive learning and "
               "diffusion priors. NeurIPS 36.",
    "mindeye2": "Scotti PS et al. (2024). MindEye2: shared-subject models enable fMRI-to-image with 1 hour of data. "
                "ICML.",
    "mind2image": "Caselles-Dupré H et al. (2024). Mind-to-Image: projecting visual mental imagination of the brain "
                  "from fMRI. arXiv:2404.05468.",
    "clip": "Radford A et al. (2021). Learning transferable visual models from natural language supervision. ICML.",
    "openclip": "Cherti M et al. (2023). Reproducible scaling laws for contrastive language-image learning. CVPR.",
    "unclip": "Ramesh A et al. (2022). Hierarchical text-conditional image generation with CLIP latents. "
              "arXiv:2204.06125.",
    "composable": "Liu N et al. (2022). Compositional visual generation with composable diffusion models. ECCV. "
                  "arXiv:2206.01714.",
    "mirage": "MIRAGE (2026). arXiv:2605.17198.",
    "ssim": "Wang Z et al. (2004). Image quality assessment: from error visibility to structural similarity. "
            "IEEE Trans Image Process 13(4):600-612.",
}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _keys(config, stages) -> list[str]:
    keys = ["bids", "bidsapps", "nipype", "pybids"]
    if "preprocessing" in stages:
        keys += ["fd", "dvars"]
    if config.resolved_space != "func":
        keys.append("fmriprep")
    if "single-trial betas" in stages:
        keys += ["nilearn", "nsd"]
        if config.glm.startswith("fithrf"):
            keys.append("glmsingle")
        if config.glm == "fithrf-denoise-rr":
            keys.append("fracridge")
        if config.glm == "lss":
            keys.append("lss")
    if "decoding" in stages:
        keys += ["braindiffuser", "mind2image", "mindeye", "mindeye2", "ssim"]
        if "clip" in config.target:
            keys += ["clip", "openclip"]
        if config.generator == "unclip":
            keys.append("unclip")
            if any(t in config.target for t in ("text", "clip-text")):
                keys += ["composable", "mirage"]
    return keys


def citations_markdown(config, stages) -> str:
    return "\n".join(f"- {CITATIONS[k]}" for k in _keys(config, stages))


def _glm_facts(metas: list[dict]) -> str:
    """What the sidecars say was modelled, in words (no file names, no raw JSON)."""
    nuisance = sorted({t for m in metas for t in (m.get("nuisance_event_types") or [])})
    text = (f"Other events ({', '.join(nuisance)}) were modelled with one regressor per event type. "
            if nuisance else "The dataset has no events other than trials and rest, so no nuisance events were "
            "modelled. ")
    fallbacks = sorted({m["fallback_reason"] for m in metas if m.get("fallback_reason")})
    if fallbacks:
        text += f"Fallback: {'; '.join(fallbacks)}. "
    units = {m.get("beta_units") for m in metas if not m.get("zscored")}
    if units == {"peak"}:
        durations = sorted({(m.get("peak_scaling") or {}).get("reference_duration_s") for m in metas} - {None})
        text += ("Betas are in % signal change at the peak of one trial's response (GLMsingle's scaling): each "
                 "voxel's betas were multiplied by the peak of its HRF's response to a trial of the session's median "
                 f"duration ({' and '.join(f'{d:g}' for d in durations)} s). ")
    n_trials = sum(int(m.get("n_trials") or 0) for m in metas)
    if metas:
        text += f"In all, {n_trials} trials in {len(metas)} task/session model(s). "
    repeated = [int(m.get("n_repeated_stimuli") or 0) for m in metas]
    if metas and not any(repeated):
        text += ("No stimulus was repeated within a session, so the noise-ceiling SNR (ncsnr; Natural Scenes "
                 "Dataset, Allen et al. 2022) is undefined (written as 0).")
    else:
        text += ("The noise-ceiling SNR (ncsnr) of every voxel follows the Natural Scenes Dataset (Allen et al. "
                 "2022), from stimuli shown more than once within a session.")
    return text


#: the voxel-ranking rules of a shared decoder fitted to a participant (its model sidecar's info.voxel_ranking)
VOXEL_RANKING_TEXT = {
    "shared stimuli": "voxels ranked by how well the group's response to the stimuli it shared with this "
                      "participant predicts them (no training stimulus repeated, so no ncsnr)",
    "ncsnr": "voxels ranked by their noise-ceiling SNR (ncsnr) over repeated training stimuli",
    "none": "every voxel of the mask kept (nothing to rank them by)",
}


def _shared_voxel_ranking(config, output_dir: Path, subject: str) -> str:
    """``; voxels ranked by ... (k voxels)`` per target, from the fitted models' sidecars (``info.voxel_ranking``):
    which rule chose the voxels depends on the participant's data, so the page must say which one ran."""
    from ..bids.derivatives import derivative_path

    parts = []
    for target in config.target:
        sidecar = derivative_path(output_dir, subject=subject, **config.space_entities,
                                  desc=f"{target.replace('-', '')}shared", datatype="decoding", suffix="model",
                                  extension=".json")
        try:
            info = json.loads(sidecar.read_text()).get("info") or {}
        except (OSError, ValueError, AttributeError):
            continue
        rule = info.get("voxel_ranking")
        if not rule:
            continue
        text = VOXEL_RANKING_TEXT.get(rule, f"voxel ranking: {rule}")
        if info.get("n_voxels"):
            text += f", {info['n_voxels']} voxels used"
        parts.append(f"{target}: {text}" if len(config.target) > 1 else text)
    return ("; " + "; ".join(parts)) if parts else ""


def _own_decoder_facts(config, output_dir: Path, subject: str) -> str:
    """What the participant's own decoders chose (voxel count, penalty scale), from their model sidecars: both
    are chosen by cross-validation on the participant's data, so a methods section must give the values."""
    from ..bids.derivatives import derivative_path

    voxels, scales, joint = [], [], True
    for target in config.target:
        sidecar = derivative_path(output_dir, subject=subject, **config.space_entities,
                                  desc=f"{target.replace('-', '')}{config.decoder}", datatype="decoding",
                                  suffix="model", extension=".json")
        try:
            info = json.loads(sidecar.read_text()).get("info") or {}
        except (OSError, ValueError, AttributeError):
            continue
        label = f"{target}: " if len(config.target) > 1 else ""
        selection = info.get("voxel_selection") or {}
        counts = [int(k) for k in (selection.get("cv_error") or {}) if str(k).isdigit()]
        if selection.get("chosen") and counts:
            voxels.append(f"{label}{selection['chosen']:,} of {max(counts):,}")
        elif selection.get("chosen"):
            voxels.append(f"{label}all {selection['chosen']:,} (no repeated training stimulus to rank them by)")
        penalty = info.get("penalty_scale") or {}
        if penalty.get("chosen") is not None and "cv_twoway" in penalty:
            scales.append(f"{label}{float(penalty['chosen']):.3g}")
            joint = "maximin" in str(penalty.get("rule", ""))
    text = ""
    if any(t in config.target for t in ("text", "clip-text")):
        text += (" Text features were " + ("TF-IDF vectors of words and word pairs of the stimuli's captions "
                                           "(vocabulary from the training captions)" if "text" in config.target
                                           else "") + (" and " if set(config.target) >= {"text", "clip-text"} else "")
                 + ("CLIP text embeddings of the captions" if "clip-text" in config.target else "")
                 + "; each item's caption was the one of a bank (training captions, cue texts"
                 + (", a caption file" if config.values.get("captions") else "") + ") closest (cosine) to its "
                 "decoded text features.")
    if voxels:
        text += (" Voxels were ranked by their ncsnr over repeated training stimuli and their number chosen by "
                 "cross-validation grouped by stimulus (the least ridge error among halvings of the mask): "
                 + "; ".join(voxels) + " voxels.")
    if scales:
        text += (" For held-out perception items the per-feature penalties were multiplied by one common factor "
                 "(at most 1) chosen by the same grouped cross-validation "
                 + ("to keep both two-way identification and PixCorr near their best (maximin of the two ratios to "
                    "their best)" if joint else "for two-way identification")
                 + ": " + "; ".join(scales) + "; imagery items used the unscaled penalties.")
    return text


def methods_paragraphs(config, *, stages, output_dir: Path, subject: str) -> list[str]:
    paragraphs = [
        f"Results were produced with m2i {__version__} (bids_m2i), a BIDS-App (Gorgolewski et al. 2017) built on "
        f"nipype {_version('nipype')} (Gorgolewski et al. 2011), pybids {_version('pybids')}, nibabel "
        f"{_version('nibabel')}, nilearn {_version('nilearn')}, numpy {_version('numpy')} and torch "
        f"{_version('torch')}. Stages run: {', '.join(stages)}.",
    ]
    if "preprocessing" in stages and config.resolved_space == "func":
        paragraphs.append(
            "Every BOLD volume was realigned rigidly (6 parameters) to its run's reference with a robust "
            "(Geman-McClure weighted), coarse-to-fine Gauss-Newton registration implemented in torch; each run's "
            "reference was registered rigidly to the first run's reference, and every volume was resampled once "
            "(trilinear) from the raw data onto this participant grid; the brain mask was computed from the average of "
            "all runs' references on that grid, within the field of view common to all runs. Framewise displacement (Power et al. 2012, "
            f"50 mm sphere; threshold {config.fd_threshold} mm in the figures), DVARS and standardised DVARS "
            "(Nichols 2017; after scaling the median in-mask intensity to 1000) and the global signal were computed "
            "per run. Non-steady-state volumes at the start of each run were "
            + ("detected automatically" if config.dummy_scans is None else f"set to {config.dummy_scans}")
            + " and left out of the single-trial model.")
    elif config.resolved_space != "func":
        paragraphs.append(f"Preprocessed BOLD runs, brain masks and confounds in the {config.resolved_space} space "
                          "were taken from fMRIPrep (Esteban et al. 2019); the participant mask is the intersection "
                          "of the run masks. Each frame was modelled at the time its volume stands for (fMRIPrep's "
                          "StartTime after slice-timing correction, else the median slice time); non-steady-state "
                          "volumes "
                          + ("flagged by fMRIPrep" if config.dummy_scans is None
                             else f"(the first {config.dummy_scans} of each run)")
                          + " were left out of the single-trial model.")
    if "single-trial betas" in stages:
        # this run's method only: another --glm's outputs from an earlier run may sit beside them
        # and this run's space only: a run with another --space into this OUTPUT_DIR keeps its betas beside them
        from ..bids.derivatives import space_entities_of

        sidecars = sorted(p for p in (Path(output_dir) / f"sub-{subject}").rglob(
            f"*_stat-effect_desc-{config.glm_label}_statseries.json")
            if space_entities_of(p) == dict(config.space_entities))
        metas = [json.loads(p.read_text()) for p in sidecars]
        method_text = {
            "lsa": "a least-squares-all model (one regressor per trial; Mumford et al. 2012)",
            "lss": "least-squares-separate models (Mumford et al. 2012)"
                   + (", one per trial with the other trials grouped by condition (LSS-N)"
                      if config.lss_split == "condition" else ", one per trial against all others (LSS-1)"),
            "fithrf": "a per-voxel HRF chosen from a library by the R² of the full model (GLMsingle's type B, "
                      "Prince et al. 2022)",
            "fithrf-denoise-rr": "GLMsingle's method (Prince et al. 2022), reimplemented: a per-voxel HRF chosen "
                                 "from a library, noise regressors from principal components of a noise pool "
                                 "(their number chosen by cross-validated beta reliability across repeats) and "
                                 "per-voxel fractional ridge regression (Rokem & Kay 2020)",
        }[config.glm]
        paragraphs.append(
            f"Single-trial responses (betas, % BOLD) were estimated for each task and session with all runs in one "
            f"model (per-run HRF convolution, drift and nuisance terms), using {method_text}. "
            + _glm_facts(metas)
            + (" Betas were z-scored per voxel within session." if config.zscore_betas else ""))
    if "decoding" in stages:
        target = " and ".join(config.target)
        paragraphs.append(
            f"Decoders mapping betas to features ({target}) were trained on perception trials only, with "
            f"held-out test stimuli never seen in training (all their repeats held out), using "
            + ("ridge regression with one regularisation per feature chosen by efficient leave-one-out "
               "cross-validation" if config.decoder == "ridge" else "a residual MLP trained with MSE and "
               "contrastive losses (after MindEye, Scotti et al. 2023)")
            + ("" if not config.values.get("shared_decoder") else
               ", except that the model used was the group's shared-subject decoder (after MindEye2, Scotti et al. "
               "2024; "
               + ", ".join(Path(p).name for p in config.shared_decoder) + "): only this participant's linear map "
               "into its shared space was fitted, on the participant's training trials"
               + _shared_voxel_ranking(config, output_dir, subject))
            + "."
            + ("" if config.values.get("shared_decoder") or config.decoder != "ridge" else
               _own_decoder_facts(config, output_dir, subject))
            + " Predictions were rescaled to the training features' scale (Ozcelik & VanRullen 2023): for held-out "
            "perception trials by one factor that gives their deviations from the training mean the training "
            "features' total variance, for imagery trials by one such factor for their deviations from their own "
            "mean. The "
            "decoders were applied to held-out perception trials"
            + (" (repeats averaged)" if config.average_repeats else "")
            + " and to imagery trials, from memory and from a text cue (Caselles-Dupré et al. 2024). "
            + ("Images were generated by the inverse pixel transform." if config.generator == "pixels" else
               "Images were generated by Stable unCLIP from the decoded CLIP embeddings"
               + (", starting from the pixel reconstruction's latent noised to 0.75 of the schedule"
                  if "pixels" in config.target else "")
               + (" and prompted with the retrieved caption, image and text guidance mixed half and half by "
                  "composable guidance (Liu et al. 2022), as MIRAGE (2026) mixes them"
                  if any(t in config.target for t in ("text", "clip-text")) else "")
               + (f"; {config.values['candidates']} candidates per item from their own seeds, the one whose CLIP "
                  "image embedding is closest (cosine) to the decoded embedding kept"
                  if (config.values.get("candidates") or 1) > 1 else "")
               + ".")
            + " Metrics follow MindEye and Brain-Diffuser (PixCorr, SSIM, two-way identification against distinct "
            "targets, retrieval), each with its chance level and a permutation p-value.")
    return paragraphs
