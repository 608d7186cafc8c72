"""The group level: every finished participant's metrics in one table and one page.

It runs on whatever participants have finished (their ``desc-metrics_table.tsv`` exists) and lists those
missing, so it can be rerun as more participant jobs end.

Every row carries the GLM method (``glm_method``) whose betas the participant's decoders used, read from the
statseries named in the participant's predictions table, and the decoder and generator (``decoder``:
``ridge``, ``mlp`` or ``shared``; ``generator``: ``pixels``, ``unclip``, ``unclip-best4`` for best of 4), read
from the sidecar of its reconstructions. Participants decoded differently are never averaged together: the
summary has one set of rows per (method, decoder, generator), and the log and the page say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..bids.derivatives import space_entities_of, space_name_part
from ..errors import InputMissingError, NoDataSelected
from ..models.tiny import TINY_MODELS_NOTE
from ..utils.atomic import write_text, write_tsv
from ..utils.paths import natural_key

LOGGER = logging.getLogger("m2i.group")

KEYS = ["condition", "cue", "metric", "feature_space"]
#: what must be equal for participants' metrics to be averaged (besides the metric's own keys)
SETTINGS = ["glm_method", "decoder", "generator"]
GROUP_COLUMNS = ["participant_id", *SETTINGS, *KEYS, "value", "chance", "p_value", "n_items", "n_candidates",
                 "mean", "sd", "n", "note"]


def expected_participants(config) -> list[str]:
    """The participants of BIDS_DIR, or those of --participant-label; a label neither in BIDS_DIR nor in
    OUTPUT_DIR (a typo) is exit 18 as at the participant level, not a participant counted as "not finished".
    The group level reads only OUTPUT_DIR, so a participant whose derivatives are there counts even when its raw
    data are not in BIDS_DIR (moved, or a derivatives-only copy)."""
    present = sorted((p.name[4:] for p in Path(config.bids_dir).glob("sub-*") if p.is_dir()), key=natural_key)
    if not config.participant_label:
        return present
    derived = {p.name[4:] for p in Path(config.output_dir).glob("sub-*") if p.is_dir()}
    absent = [label for label in config.participant_label if label not in present and label not in derived]
    if absent:
        raise NoDataSelected(f"Participant(s) {', '.join(absent)} not found in the dataset",
                             hint=f"participants present: {', '.join(present) or 'none'}")
    return list(config.participant_label)


def decoding_table_path(output_dir: Path, subject: str, desc: str, space: dict | None = None) -> Path:
    """A participant's decoding table for the space of the group run (``--space``, as at the participant level;
    none for the participant's own grid). With ``--space`` without fMRIPrep's ``:res-``/``:cohort-`` qualifier,
    the one variant the participant level chose (``space-X_res-2``) is found too."""
    from ..bids.derivatives import derivative_path

    space = dict(space or {})
    exact = derivative_path(output_dir, subject=subject, **space, desc=desc, datatype="decoding", suffix="table",
                            extension=".tsv")
    if exact.exists() or not space or set(space) != {"space"}:
        return exact
    variants = sorted(exact.parent.glob(f"sub-{subject}_space-{space['space']}_*desc-{desc}_table.tsv"))
    return variants[0] if len(variants) == 1 else exact


def metrics_path(output_dir: Path, subject: str, space: dict | None = None) -> Path:
    return decoding_table_path(output_dir, subject, "metrics", space)


def other_spaces(output_dir: Path, subject: str) -> list[str]:
    """The space entities of the decoding outputs a participant has (``space-T1w``), for the hint."""
    folder = Path(output_dir) / f"sub-{subject}" / "decoding"
    return sorted({space_name_part(space_entities_of(path))
                   for path in folder.glob(f"sub-{subject}_*desc-metrics_table.tsv")})


def glm_method_of(output_dir: Path, subject: str, space: dict | None = None) -> str:
    """The GLM method label(s) of the betas a participant's last decoding run used (``n/a`` if unknown).

    The predictions table is rewritten with the metrics table by every decoding run, and its ``source`` column
    names the statseries (``..._desc-<method>_statseries.nii.gz``): stale files of another method that an
    earlier run left beside them do not count.
    """
    path = decoding_table_path(output_dir, subject, "predictions", space)
    try:
        sources = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)["source"]
    except (OSError, KeyError, ValueError):
        return "n/a"
    methods = set()
    for source in sources:
        for part in Path(str(source)).name.split("_"):
            if part.startswith("desc-"):
                methods.add(part[5:])
    return "+".join(sorted(methods)) if methods else "n/a"


def decoding_settings_of(output_dir: Path, subject: str, space: dict | None = None) -> tuple[str, str]:
    """``(decoder, generator)`` of a participant's last decoding run, from the sidecar of a reconstruction named
    in its predictions table (rewritten with the metrics table by every decoding run); ``n/a`` when unknown.
    The generator carries the best-of-N count (``unclip-best4``): choosing among candidates changes the scores."""
    import json

    path = decoding_table_path(output_dir, subject, "predictions", space)
    try:
        images = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)["image"]
    except (OSError, KeyError, ValueError):
        return "n/a", "n/a"
    for image in images:
        if not image or image == "n/a":
            continue
        try:
            meta = json.loads((Path(output_dir) / image).with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        generator = str(meta.get("Generator") or "n/a")
        try:
            candidates = int(meta.get("Candidates") or 1)
        except (TypeError, ValueError):
            candidates = 1
        if candidates > 1:
            generator += f"-best{candidates}"
        return str(meta.get("Decoder") or "n/a"), generator
    return "n/a", "n/a"


def read_metrics_table(path: Path) -> pd.DataFrame | None:
    """One participant's metrics table, or None (with a warning naming it) when it is empty, damaged or not
    ours: a copy or sync cut short must not stop the group level for everyone (it stopped it with exit 1)."""
    subject = path.name.split("_")[0]
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problem = f"cannot be read ({type(exc).__name__}: {exc})"
    else:
        lacking = [c for c in [*KEYS, "value"] if c not in table.columns]
        # a metric given twice (tables pasted together, a row copied by hand) counted as a second participant
        # in the summary's n, mean and sd; which of the two is right cannot be told
        repeated = (table[table.duplicated(KEYS, keep="first")][KEYS].astype(str).agg("/".join, axis=1)
                    if not lacking else pd.Series(dtype=str))
        if not lacking and len(table) and repeated.empty:
            return table
        if lacking:
            problem = f"lacks the column(s) {', '.join(lacking)}"
        elif len(table):
            problem = f"gives the same metric more than once ({', '.join(sorted(set(repeated)))})"
        else:
            problem = "has no rows"
    LOGGER.warning("%s %s: %s is left out as not finished; rerun the participant level for %s", path, problem,
                   subject, subject)
    return None


def collect_group_metrics(output_dir: Path, participants: list[str],
                          space: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Every participant's metrics of the decoding run in ``space`` (the space entities of ``--space``)."""
    frames, missing = [], []
    for subject in participants:
        path = metrics_path(output_dir, subject, space)
        if not path.exists():
            elsewhere = [s for s in other_spaces(output_dir, subject) if s != space_name_part(space)]
            if elsewhere:
                LOGGER.warning("sub-%s has decoding results only in other spaces (%s): give the group level the "
                               "--space of the participant level (e.g. --space %s)", subject,
                               ", ".join(s or "the participant's own grid (no --space)" for s in elsewhere),
                               elsewhere[0].split("_")[0].removeprefix("space-") or "func")
            missing.append(subject)
            continue
        table = read_metrics_table(path)
        if table is None:
            missing.append(subject)
            continue
        table.insert(0, "participant_id", f"sub-{subject}")
        table.insert(1, "glm_method", glm_method_of(output_dir, subject, space))
        decoder, generator = decoding_settings_of(output_dir, subject, space)
        table.insert(2, "decoder", decoder)
        table.insert(3, "generator", generator)
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=GROUP_COLUMNS), missing
    return pd.concat(frames, ignore_index=True), missing


def _finite(column: pd.Series) -> pd.Series:
    """Numbers of a column read as text; ``n/a``, text and non-finite values (``inf`` in a hand-edited table,
    which made the group mean ``inf``) become NaN: not numbers to average."""
    numbers = pd.to_numeric(column.replace("n/a", np.nan), errors="coerce")
    return numbers.where(np.isfinite(numbers))


def tiny_model_participants(per_participant: pd.DataFrame) -> list[str]:
    """The participants whose metrics came from tiny random-weight models (their rows' note says so)."""
    if "note" not in per_participant:
        return []
    notes = per_participant["note"].astype(str)
    return sorted(set(per_participant.loc[notes.str.contains(TINY_MODELS_NOTE, regex=False), "participant_id"]))


def summarize(per_participant: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and n over participants of every (GLM method, decoder, generator, condition, cue, metric,
    feature space)."""
    values = per_participant.assign(value_num=_finite(per_participant["value"]),
                                    chance_num=_finite(per_participant["chance"]))
    rows = []
    for key, part in values.groupby([*SETTINGS, *KEYS], sort=True):
        numbers = part["value_num"].dropna()
        # a mean over results of tiny random-weight models (m2i-models make-tiny) must say so as they do
        tiny = "; " + TINY_MODELS_NOTE if tiny_model_participants(part) else ""
        rows.append({
            "participant_id": "group", **dict(zip([*SETTINGS, *KEYS], key)),
            "value": "n/a", "chance": part["chance_num"].mean() if part["chance_num"].notna().any() else "n/a",
            "p_value": "n/a", "n_items": "n/a", "n_candidates": "n/a",
            "mean": numbers.mean() if len(numbers) else "n/a",
            "sd": numbers.std(ddof=1) if len(numbers) > 1 else "n/a",
            "n": int(len(numbers)), "note": "mean over participants" + tiny,
        })
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def run_group_level(config) -> int:
    output_dir = Path(config.output_dir).absolute()
    participants = expected_participants(config)
    per_participant, missing = collect_group_metrics(output_dir, participants, config.space_entities)
    if per_participant.empty:
        raise InputMissingError(
            f"No participant has finished in {output_dir} (no sub-*/decoding/*_desc-metrics_table.tsv)",
            hint="run the participant level (through decoding) first",
        )
    if missing:
        LOGGER.warning("Group level without %d unfinished participant(s): %s", len(missing),
                       ", ".join(f"sub-{m}" for m in missing))
    for column in GROUP_COLUMNS:
        if column not in per_participant:
            per_participant[column] = "n/a"
    methods = mixed_methods(per_participant)
    if methods:
        LOGGER.warning("Participants were decoded from different GLM methods (%s): the group summary is given "
                       "per method, never averaged across them; rerun the participant level with one --glm for "
                       "all to compare them", methods)
    decoders = mixed_methods(per_participant, ["decoder", "generator"])
    if decoders:
        LOGGER.warning("Participants were decoded with different decoders or generators (%s): the group summary "
                       "is given per setting, never averaged across them", decoders)
    tiny = ", ".join(tiny_model_participants(per_participant))
    if tiny:
        LOGGER.warning("Decoded with tiny random weights (m2i-models make-tiny), whose numbers are meaningless: %s; "
                       "the group summary says so in its note", tiny)
    table = pd.concat([summarize(per_participant), per_participant[GROUP_COLUMNS]], ignore_index=True)
    metrics_name, conditions_name, page_name = group_output_names(config.space_entities)
    write_tsv(output_dir / "group" / metrics_name, table)
    from ..evaluation.table import conditions_side_by_side  # vision and imagery side by side (group means)

    write_tsv(output_dir / "group" / conditions_name,
              conditions_side_by_side(table[table["participant_id"] == "group"], value="mean"))
    pages = {f"sub-{label}": participant_page(output_dir, label, config.space_entities)
             for label in participants if label not in missing}
    # a page never written (the report step failed after decoding; decoding folders copied alone): no dead link
    pages = {subject: page if (output_dir / page).is_file() else None for subject, page in pages.items()}
    write_text(output_dir / "group" / page_name, render_group_html(table, missing, participants, methods,
                                                                   pages, decoders, tiny))
    LOGGER.info("Group level: %d participant(s) summarised, %d missing -> %s", len(participants) - len(missing),
                len(missing), output_dir / "group")
    return 0


def group_output_names(space: dict | None) -> list[str]:
    """The files a group run writes in ``group/`` (its metrics and side-by-side tables, its page)."""
    prefix = group_name_prefix(space)
    return [f"{prefix}desc-metrics_table.tsv", f"{prefix}desc-conditions_table.tsv", f"{prefix}group.html"]


def group_name_prefix(space: dict | None) -> str:
    """``space-T1w_`` (+ ``cohort-``/``res-``) for the group files of a ``--space`` run, as the participants'
    decoding outputs carry it: group runs of two spaces into one OUTPUT_DIR keep their own summaries. Empty for
    the participant's own grid (``group/desc-metrics_table.tsv``, as before)."""
    part = space_name_part(space)
    return f"{part}_" if part else ""


def mixed_methods(per_participant: pd.DataFrame, columns=("glm_method",)) -> str:
    """``"lsa: sub-01; fithrfdenoiserr: sub-02"`` when participants differ in ``columns`` (the GLM method by
    default; several columns are joined with ``/``: ``"shared/pixels: sub-06; ridge/pixels: ..."``), else ``""``."""
    columns = list(columns)
    labels = per_participant[columns].astype(str).agg("/".join, axis=1)
    by_setting = per_participant.assign(_setting=labels).groupby("_setting")["participant_id"].unique()
    if len(by_setting) < 2:
        return ""
    return "; ".join(f"{setting}: {', '.join(sorted(ids))}" for setting, ids in by_setting.items())


def participant_page(output_dir: Path, subject: str, space: dict | None = None) -> str:
    """The name of the participant page of the outputs summarised (``sub-01_space-T1w_res-2.html``): the page
    carries the space entities of the participant's metrics table, ``res``/``cohort`` included."""
    from ..reports.participant import report_path

    return report_path(output_dir, subject, space_entities_of(metrics_path(output_dir, subject, space))).name


def render_group_html(table: pd.DataFrame, missing: list[str], participants: list[str], mixed: str = "",
                      pages: dict[str, str] | None = None, mixed_decoders: str = "", tiny: str = "") -> str:
    import time

    from jinja2 import Environment, PackageLoader, select_autoescape

    from .. import __version__

    def fmt(value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value
        return "n/a" if not np.isfinite(number) else f"{number:.3f}"

    from ..reports.side_by_side import side_by_side_rows

    def _count(value):  # a number of participants, not a measure: no decimals
        try:
            return str(int(float(value)))
        except (TypeError, ValueError):
            return value

    summary = table[table["participant_id"] == "group"]
    rows = table[table["participant_id"] != "group"]
    side_headings, side_rows = side_by_side_rows(summary, value="mean")
    # the templates are *.html.j2: select_autoescape(["html"]) looks at the last extension only and left
    # the cells of hand-edited or foreign metrics tables unescaped (a <script> in one ran in the page)
    env = Environment(loader=PackageLoader("bids_m2i", "data/templates"),
                      autoescape=select_autoescape(["html", "html.j2"]))
    return env.get_template("group.html.j2").render(
        version=__version__, generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        n_done=len(participants) - len(missing), n_expected=len(participants),
        missing=[f"sub-{m}" for m in missing], mixed=mixed, mixed_decoders=mixed_decoders, tiny=tiny,
        summary=[{k: (fmt(v) if k != "n" else _count(v)) for k, v in r.items()} for r in summary.to_dict("records")],
        side_headings=side_headings, side_rows=side_rows,
        rows=[{**{k: fmt(v) for k, v in r.items()},
               "page": (pages.get(r["participant_id"]) if pages is not None else f"{r['participant_id']}.html")}
              for r in rows.to_dict("records")],
    )
