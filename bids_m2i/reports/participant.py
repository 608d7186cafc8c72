"""The participant report ``OUTPUT_DIR/sub-<label>[_space-<space>].html``: one self-contained page (figures and images are
embedded), written for whatever stages ran. It reads the derivatives on disk, so it shows what a user gets."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..utils.atomic import write_text
from ..utils.paths import natural_key
from .methods import citations_markdown, methods_paragraphs
from .numbers import format_number as _fmt

MAX_PAIRS_PER_GROUP = 48


def data_uri(path: Path, thumbnail: int | None = None) -> str:
    path = Path(path)
    if path.suffix == ".svg":
        return "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode()
    if thumbnail:
        from ..utils.images import read_stimulus

        img = read_stimulus(path)  # a large stimulus decoded at reduced size (JPEG) and never held whole
        img.thumbnail((thumbnail, thumbnail))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _run_name(path: Path) -> str:
    parts = [p for p in path.name.split("_") if p.split("-")[0] in ("ses", "task", "acq", "run")]
    return "_".join(parts)


def _method_of(statseries: Path) -> str:
    """The GLM method label of a statseries file name (``..._desc-<method>_statseries.json``)."""
    for part in Path(statseries).name.split("_"):
        if part.startswith("desc-"):
            return part[5:]
    return "?"


def glm_details(meta: dict) -> str:
    """One readable sentence from a statseries sidecar (method, HRF, noise PCs, ridge, repeats, units)."""
    parts = [f"Method: {meta.get('method', '?')}"]
    if meta.get("effective_method") and meta.get("effective_method") != meta.get("method"):
        parts.append(f"run as {meta['effective_method']} ({meta.get('fallback_reason') or 'fallback'})")
    if meta.get("hrf_library"):
        parts.append("HRF chosen per voxel from a library")
    elif meta.get("hrf_model"):
        parts.append(f"HRF: {meta['hrf_model']}")
    if meta.get("n_pcs"):
        parts.append(f"noise PCs: {meta['n_pcs']}")
    if meta.get("ridge_fractions"):
        parts.append(f"median ridge fraction {_fmt(meta.get('median_ridge_fraction'), 2)}")
    nuisance = meta.get("nuisance_event_types") or []
    parts.append("nuisance events: " + (", ".join(nuisance) if nuisance else "none"))
    repeated = meta.get("n_repeated_stimuli")
    if repeated is not None:
        parts.append(f"repeated stimuli: {repeated}" if repeated else
                     "no repeated stimuli: ncsnr undefined (written as 0)")
    if meta.get("units"):
        parts.append(f"units: {meta['units']}{_beta_scaling(meta)}")
    return "; ".join(parts) + "."


def _beta_scaling(meta: dict) -> str:
    """What a beta of 1 means (the sidecar's ``beta_units``; sidecars before issue 14 have none: plateau)."""
    if meta.get("zscored"):
        return ""
    if meta.get("beta_units") == "peak":
        duration = (meta.get("peak_scaling") or {}).get("reference_duration_s")
        trial = f"a {duration:g} s trial" if isinstance(duration, (int, float)) else "one trial"
        return f" at the peak of {trial}'s response (GLMsingle's scaling)"
    return " (plateau a sustained response would reach: unit-sum HRF)"


def _ncsnr_mosaic(statmap: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from ..utils.atomic import atomic_path

    data = np.nan_to_num(np.asarray(nib.load(str(statmap)).dataobj, dtype=float))  # NaN: older outputs
    n = data.shape[2]
    picks = np.unique(np.linspace(0, n - 1, min(n, 12)).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(1.4 * len(picks), 1.7))
    axes = np.atleast_1d(axes)
    vmax = max(np.nanpercentile(data[data > 0], 99) if (data > 0).any() else 1.0, 1e-6)
    for ax, k in zip(axes, picks):
        ax.imshow(np.rot90(data[:, :, k]), cmap="hot", vmin=0, vmax=vmax)
        ax.set_axis_off()
        ax.set_title(f"z={k}", fontsize=7)
    fig.suptitle(f"ncsnr map (0 to {vmax:.2f})", fontsize=9)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out_png


def build_participant_report(*, output_dir: Path, bids_dir: Path, subject: str, config, run_summaries: list[dict],
                             trials: pd.DataFrame | None, work_dir: Path, stages: list[str]) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    output_dir = Path(output_dir)
    sub_dir = output_dir / f"sub-{subject}"
    warnings: list[str] = []

    # --- summary --------------------------------------------------------------------------------------
    runs = []
    for summary in run_summaries:
        runs.append({
            "name": summary.get("name", "?"), "n_volumes": summary.get("n_volumes", "n/a"),
            "tr": _fmt(summary.get("tr"), 3), "nonsteady": len(summary.get("nonsteady_volumes", [])),
            "fd_mean": _fmt(summary.get("fd_mean")), "fd_max": _fmt(summary.get("fd_max")),
            "high_motion": summary.get("n_high_motion", "n/a"),
        })
        warnings += [f"{summary.get('name')}: {w}" for w in summary.get("warnings", [])]
    trial_counts = []
    if trials is not None and not trials.empty:
        grouped = trials.groupby(["task", "session", "role", "condition", "cue"], dropna=False).size()
        for (task, session, role, condition, cue), n in grouped.items():
            trial_counts.append(dict(task=task, session=session, role=role, condition=condition, cue=cue, n=int(n)))

    # --- preprocessing figures ---------------------------------------------------------------------------
    captions = {"motion": "Head-motion parameters relative to the participant reference (translations in mm, "
                          "rotations in degrees).",
                "fd": "Framewise displacement (Power et al. 2012) with the threshold line.",
                "carpet": "Carpet plot: every brain voxel's time series after motion correction (rows), with FD "
                          "and DVARS above.",
                "beforeafter": "Temporal standard deviation before and after motion correction."}
    preproc_figures = []
    figures_dir = sub_dir / "figures"
    bold_figs = sorted(figures_dir.glob("*_bold.svg"), key=natural_key) if figures_dir.exists() else []
    by_run: dict[str, list[Path]] = {}
    for fig in bold_figs:
        by_run.setdefault(_run_name(fig), []).append(fig)
    for name, figs in by_run.items():
        items = []
        for kind in ("motion", "fd", "carpet", "beforeafter"):
            for fig in figs:
                if f"desc-{kind}_" in fig.name:
                    items.append({"src": data_uri(fig), "alt": f"{kind} {name}", "caption": captions[kind]})
        preproc_figures.append({"name": name, "figures": items})
    preproc_note = ("fMRIPrep's outputs were used (see its own report for preprocessing figures)."
                    if config.resolved_space != "func" else "No preprocessing figures were found.")

    # --- betas ----------------------------------------------------------------------------------------
    # only this run's GLM method: outputs of another --glm from an earlier run may sit beside them
    method = config.glm_label
    # and only this run's space: a run with another --space into this OUTPUT_DIR keeps its own betas beside them
    from ..bids.derivatives import space_entities_of, space_name_part

    current = sorted(p for p in sub_dir.rglob(f"*_stat-effect_desc-{method}_statseries.json")
                     if space_entities_of(p) == dict(config.space_entities))
    stale = sorted({_method_of(p) for p in sub_dir.rglob("*_statseries.json")} - {method})
    if stale:
        warnings.append(f"This folder also holds single-trial betas of another GLM method from an earlier run "
                        f"({', '.join(stale)}); this report, the decoding and the group level use {method} only.")
    glm_sections = []
    for series_meta in current:
        meta = json.loads(series_meta.read_text())
        warnings += list(meta.get("events_warnings") or [])
        events = series_meta.with_name(series_meta.name.replace("_stat-effect_", "_").replace("_statseries.json",
                                                                                                "_events.tsv"))
        n_trials = len(_read_tsv(events)) if events.exists() else "?"
        figures = []
        task_part = series_meta.name.split("_stat-")[0]
        for fig in sorted(figures_dir.glob(f"{task_part}_desc-design{method}_design.svg")):
            figures.append({"src": data_uri(fig), "alt": "design matrix", "caption": "Design matrix of the first run "
                            "(LSA form, one column per trial), with the collinearity of the trial regressors."})
        ncsnr_map = next(iter(sorted(series_meta.parent.glob(f"{task_part}_stat-ncsnr_desc-{method}_statmap.nii.gz"))),
                         None)
        ncsnr_defined = int(meta.get("n_repeated_stimuli", 1) or 0) > 0
        if ncsnr_defined:
            for fig in sorted(figures_dir.glob(f"{task_part}_desc-ncsnr{method}_statmap.svg")):
                figures.append({"src": data_uri(fig), "alt": "ncsnr histogram",
                                "caption": "Noise-ceiling SNR of every brain voxel (NSD definition; needs repeats)."})
            if ncsnr_map is not None:
                png = _ncsnr_mosaic(ncsnr_map, Path(work_dir) / "report" / f"{task_part}_ncsnr.png")
                figures.append({"src": data_uri(png), "alt": "ncsnr map", "caption": "ncsnr map, axial slices."})
        glm_sections.append({"name": task_part, "text": f"{n_trials} trials. {glm_details(meta)}",
                             "figures": figures})

    # --- reconstructions ------------------------------------------------------------------------------------
    predictions_path = _decoding_table(output_dir, subject, config, "predictions")
    metrics_path = _decoding_table(output_dir, subject, config, "metrics")
    recon_groups, retrieval, tiny_models = [], [], False
    decoding_note = "Not run (--stop-after preproc or glm)."
    if predictions_path.exists():
        predictions = _read_tsv(predictions_path)
        stimuli_dir = Path(bids_dir) / "stimuli"
        for (condition, cue), part in predictions.groupby(["condition", "cue"], sort=True):
            pairs = []
            for _, row in part.head(MAX_PAIRS_PER_GROUP).iterrows():
                image = output_dir / row["image"] if row.get("image", "n/a") not in ("", "n/a") else None
                if image is None or not image.exists():
                    continue
                meta_path = image.with_suffix(".json")
                if meta_path.exists() and json.loads(meta_path.read_text()).get("ModelsTiny"):
                    tiny_models = True
                left, left_text = None, ""
                stim_file = row.get("stim_file", "n/a")
                if cue == "text":
                    left_text = f"“{row.get('cue_text', '')}”"
                elif not config.report_stimuli:
                    left_text = "stimulus hidden (--no-report-stimuli)"
                elif stim_file not in ("", "n/a") and (stimuli_dir / stim_file).exists():
                    left = data_uri(stimuli_dir / stim_file, thumbnail=128)
                else:
                    left_text = row.get("stimulus", "")
                pairs.append({"left": left, "left_alt": f"stimulus {row.get('stimulus')}", "left_text": left_text,
                              "right": data_uri(image, thumbnail=128), "stimulus": row.get("stimulus"),
                              "label": f"{row.get('stimulus')} · top-1 {row.get('top1', 'n/a')}"})
            if not pairs:
                continue
            if condition == "perception":
                title, caption = "Perception (held-out images)", "Seen image | reconstruction."
            elif cue == "text":
                title, caption = ("Imagery from a text cue (pure imagination)",
                                  "Cue text | reconstruction; the imagined target was never shown.")
            else:
                title, caption = "Imagery from memory", "Cue image (the remembered stimulus) | reconstruction."
            recon_groups.append({"title": title, "caption": caption, "pairs": pairs})
        retrieval = _retrieval_examples(predictions, _decoding_table(output_dir, subject, config, "retrieval"),
                                        Path(bids_dir) / "stimuli", config.report_stimuli)
        decoding_note = "No reconstructed images were written."
    metrics = []
    side_headings, side_rows, headline_headings, headline_rows = [], [], [], []
    if metrics_path.exists():
        from .side_by_side import side_by_side_rows, twoway_headline

        metrics_frame = _read_tsv(metrics_path)
        for _, row in metrics_frame.iterrows():
            metrics.append({k: (_fmt(row[k]) if k in ("value", "chance", "p_value") else row[k]) for k in row.index})
        side_headings, side_rows = side_by_side_rows(metrics_frame)
        # the field's headline measure (two-way identification, NSD-Imagery's), repeated at the top of the page
        # so that the first screen says whether decoding worked, for each condition
        headline_headings, headline_rows = twoway_headline(metrics_frame)

    # --- methods -------------------------------------------------------------------------------------------
    methods = methods_paragraphs(config, stages=stages, output_dir=output_dir, subject=subject)
    citations = citations_markdown(config, stages=stages).splitlines()
    citations = [c[2:] for c in citations if c.startswith("- ")]
    write_text(output_dir / "logs" / "CITATION.md", "# Methods\n\n" + "\n\n".join(methods) + "\n\n## References\n\n"
               + "\n".join(f"- {c}" for c in citations) + "\n")

    page = report_path(output_dir, subject, config.space_entities)
    space_label = space_name_part(config.space_entities) or "the participant's own grid (m2i preprocessing)"
    # the templates are *.html.j2: select_autoescape(["html"]) looks at the last extension only and left
    # cue texts, stimulus names and table cells unescaped (a <script> in an events file ran in the page)
    env = Environment(loader=PackageLoader("bids_m2i", "data/templates"),
                      autoescape=select_autoescape(["html", "html.j2"]))
    config_files = run_configs_for(output_dir / "logs", subject)
    html = env.get_template("participant.html.j2").render(
        subject=subject, version=__version__, generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        bids_name=Path(bids_dir).name, warnings=warnings, stages=stages, runs=runs, fd_threshold=config.fd_threshold,
        trial_counts=trial_counts, preproc_figures=preproc_figures, preproc_note=preproc_note,
        glm_sections=glm_sections, recon_groups=recon_groups, retrieval=retrieval, tiny_models=tiny_models,
        decoding_note=decoding_note, metrics=metrics, side_headings=side_headings, side_rows=side_rows,
        headline_headings=headline_headings, headline_rows=headline_rows,
        headline_marked=any(c and c["categories"] for r in headline_rows for c in r["cells"]),
        methods=methods, citations=citations,
        config_file=config_files[-1].name if config_files else "logs/",
        space=space_label, other_reports=other_space_reports(output_dir, subject, page),
    )
    return write_text(report_path(output_dir, subject, config.space_entities), html)


def report_path(output_dir: Path, subject: str, space: dict | None = None) -> Path:
    """``OUTPUT_DIR/sub-<label>.html`` for the participant's own grid; with fMRIPrep inputs the space entities
    follow the label as in every other output's name (``sub-01_space-T1w.html``,
    ``sub-01_space-MNI152NLin2009cAsym_res-2.html``), so that runs in several spaces into one OUTPUT_DIR each
    keep the page of their own betas, decoders and metrics (as the group level's ``space-T1w_group.html``)."""
    from ..bids.derivatives import space_name_part

    part = space_name_part(space)
    return Path(output_dir) / (f"sub-{subject}_{part}.html" if part else f"sub-{subject}.html")


def other_space_reports(output_dir: Path, subject: str, own: Path) -> list[str]:
    """Names of this participant's pages of other spaces in OUTPUT_DIR (linked from each page)."""
    names = {p.name for p in Path(output_dir).glob(f"sub-{subject}.html")}
    names |= {p.name for p in Path(output_dir).glob(f"sub-{subject}_space-*.html")}
    return sorted(names - {Path(own).name})


def run_configs_for(logs_dir: Path, subject: str) -> list[Path]:
    """The resolved configs of the runs that covered a participant, oldest first: a run of every participant
    writes config-<time>.toml, an array task config-<time>_sub-<label>[+<label>...].toml."""
    return [path for path in sorted(Path(logs_dir).glob("config-*.toml"))
            if "_sub-" not in path.stem or subject in path.stem.split("_sub-", 1)[1].split("+")]


def _decoding_table(output_dir: Path, subject: str, config, desc: str) -> Path:
    """A decoding table of this run: its name carries the space entities of fMRIPrep inputs."""
    from ..bids.derivatives import derivative_path

    return derivative_path(output_dir, subject=subject, **config.space_entities, desc=desc, datatype="decoding",
                           suffix="table", extension=".tsv")


def _retrieval_examples(predictions: pd.DataFrame, ranking_path: Path, stimuli_dir: Path,
                        show_images: bool, n_examples: int = 6) -> list[dict]:
    if not ranking_path.exists():
        return []
    ranking = _read_tsv(ranking_path)
    out = []
    for _, row in ranking.head(n_examples).iterrows():
        candidates = []
        for k in range(1, 6):
            name = row.get(f"rank{k}")
            if not name or name == "n/a":
                continue
            stim_file = row.get(f"rank{k}_file", "n/a")
            src = None
            if show_images and stim_file not in ("", "n/a") and (stimuli_dir / stim_file).exists():
                src = data_uri(stimuli_dir / stim_file, thumbnail=64)
            candidates.append({"name": name, "src": src, "hit": name == row.get("stimulus")})
        out.append({"label": f"{row.get('condition')}/{row.get('cue')}: {row.get('stimulus')}",
                    "candidates": candidates})
    return out
