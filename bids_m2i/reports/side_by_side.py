"""Vision and imagery side by side, as rows for the HTML pages (participant and group).

The metrics tables are long (one row per condition, cue, metric and feature space); a reader compares a metric
across conditions, so the pages lead with the wide form of ``evaluation.table.conditions_side_by_side``: one row per
metric and feature space, one column per condition, each cell with its chance level (and, at the group level, the
spread over participants).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .numbers import format_number, format_p_value

#: column headings of the conditions, in the order the pages show them
CONDITION_LABELS = {"perception": "Perception (seen images)", "imagery_memory": "Imagery from memory",
                    "imagery_text": "Pure imagination (text cue)", "imagery": "Imagery"}
#: the field's headline metrics first (MindEye / Brain-Diffuser, NSD-Imagery), then the rest alphabetically
METRIC_ORDER = ("twoway", "pixcorr", "ssim", "brain_corr", "image_top1", "brain_top1", "top5")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def side_by_side_rows(frame: pd.DataFrame, value: str = "value") -> tuple[list[str], list[dict]]:
    """``(headings, rows)`` for a metrics table (``value="value"``) or the group summary (``value="mean"``,
    which adds ``sd`` and ``n`` to each cell). Each row: ``glm_method``, ``decoder``, ``generator`` (group
    tables), ``metric``,
    ``feature_space`` and ``cells`` (one per heading: ``value``, ``chance``, ``spread``, ``trivial``; ``None`` where
    the condition has no such metric)."""
    from ..evaluation.table import conditions_side_by_side

    if frame is None or frame.empty:
        return [], []
    wide = conditions_side_by_side(frame, value=value)
    if wide.empty:
        return [], []
    keys = [c for c in ("glm_method", "decoder", "generator", "metric", "feature_space") if c in wide.columns]
    conditions = _condition_columns(wide, keys)
    spread = {}
    if value == "mean" and {"sd", "n"} <= set(frame.columns):
        for stat in ("sd", "n"):
            extra = conditions_side_by_side(frame, value=stat)
            spread[stat] = extra.set_index(keys) if not extra.empty else None
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    wide = wide.assign(_rank=[rank.get(m, len(rank)) for m in wide["metric"]])
    wide = wide.sort_values(keys[:-2] + ["_rank", "metric", "feature_space"], kind="stable")
    rows = []
    for record in wide.to_dict("records"):
        key = tuple(record[k] for k in keys)
        cells = []
        for condition in conditions:
            number = _number(record.get(condition))
            if not np.isfinite(number):
                cells.append(None)
                continue
            chance = _number(record.get(f"{condition}_chance"))
            sd, n = (_number(spread[stat].loc[key].get(condition))
                     if spread.get(stat) is not None and key in spread[stat].index else float("nan")
                     for stat in ("sd", "n"))
            text = (f"± {sd:.3f}" if np.isfinite(sd) else "") + (f" (n = {int(n)})" if np.isfinite(n) else "")
            # top-5 among 5 candidates is right by construction: shown, but marked, never read as a result
            cells.append({"value": format_number(number), "chance": format_number(chance), "spread": text.strip(),
                          "trivial": bool(np.isfinite(chance) and chance >= 1.0)})
        rows.append({**{k: record[k] for k in keys}, "cells": cells})
    return _headings(conditions), rows


def _condition_columns(wide: pd.DataFrame, keys) -> list[str]:
    """The condition columns of ``conditions_side_by_side``'s frame, in its order (not the keys, not the chances)."""
    return [c for c in wide.columns if c not in keys and not str(c).endswith("_chance")]


def _headings(conditions) -> list[str]:
    return [CONDITION_LABELS.get(c, c.replace("_", " ")) for c in conditions]


#: what the metrics table's note says when a condition without target images is scored against category means
CATEGORY_TARGETS_NOTE = "targets are categories"


def twoway_headline(frame: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """``(headings, rows)`` of the participant page's summary: two-way identification per feature space (rows)
    and condition (columns), each cell ``value``, ``p`` (``""`` without permutations) and ``categories`` (True
    where the items were scored against the mean feature of their category's training stimuli, not against a
    target of their own: pure imagination in an image space)."""
    from ..evaluation.table import conditions_side_by_side

    if frame is None or frame.empty or "metric" not in frame.columns:
        return [], []
    twoway = frame[frame["metric"] == "twoway"]
    values = conditions_side_by_side(twoway)
    if values.empty:
        return [], []
    conditions = _condition_columns(values, ("metric", "feature_space"))
    p_values = conditions_side_by_side(twoway, value="p_value").set_index("feature_space")
    flagged = twoway.assign(categories=twoway["note"].astype(str).str.contains(CATEGORY_TARGETS_NOTE, regex=False)
                            .astype(float))
    categories = conditions_side_by_side(flagged, value="categories").set_index("feature_space")
    rows = []
    for record in values.to_dict("records"):
        space, cells = record["feature_space"], []
        for condition in conditions:
            number = _number(record.get(condition))
            if not np.isfinite(number):
                cells.append(None)
                continue
            p = p_values.loc[space].get(condition) if space in p_values.index else None
            flag = _number(categories.loc[space].get(condition)) if space in categories.index else float("nan")
            cells.append({"value": format_number(number), "p": format_p_value(p), "categories": bool(flag == 1.0)})
        rows.append({"feature_space": space, "cells": cells})
    return _headings(conditions), rows
