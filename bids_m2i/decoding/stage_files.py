"""The decoding stages' results as files, so that each stage can run as its own workflow node.

Arrays travel as ``.npz`` / ``.npy`` (no pickles: every file says what it holds and how big it is), tables as
TSV, small settings as JSON, decoders as their own ``.safetensors`` + ``.json`` (the derivatives' model files).
Each ``save_*`` writes into a folder (the node's directory) and returns the paths it wrote; each ``load_*``
gives back the object :mod:`bids_m2i.decoding.reconstruct`'s stage functions take. Saving then loading gives
the same arrays, bit for bit, so the nodes compute exactly what one in-process run computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.atomic import atomic_path, save_npy, save_png, write_json, write_tsv
from .features import PixelBasis
from .reconstruct import (FittedDecoders, ItemPredictions, PreparedTrials, Reconstructions)
from .splits import DecodingSplit

NA = "n/a"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return path


def _load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_table(path) -> pd.DataFrame:
    """A TSV of strings, as written (``n/a`` stays a string)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


# --- betas ---------------------------------------------------------------------------------------------------
def save_betas(folder, betas: np.ndarray) -> Path:
    """(n_trials, n_voxels) float32, read back memory-mapped by the later nodes."""
    return save_npy(Path(folder) / "betas.npy", np.ascontiguousarray(betas, dtype=np.float32))


def load_betas_file(path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


# --- stage `features` ------------------------------------------------------------------------------------------
def save_prepared(folder, prepared: PreparedTrials) -> dict[str, Path]:
    """``trials.tsv``, ``targets.npz`` (split rows, training and fine-tuning targets, pixel basis) and
    ``prepared.json`` (target order, split rule, text spaces, stimuli folder)."""
    folder = Path(folder)
    split = prepared.split
    arrays = {"split_train": split.train, "split_test": split.test, "split_imagery": split.imagery,
              "memory_rows": prepared.memory_rows}
    if split.imagery_folds is not None:
        arrays["split_imagery_folds"] = split.imagery_folds
    for space, values in prepared.train_targets.items():
        arrays[f"train/{space}"] = values
    for space, values in prepared.memory_targets.items():
        arrays[f"memory/{space}"] = values
    if prepared.pixel_basis is not None:
        arrays.update({f"basis/{k}": v for k, v in prepared.pixel_basis.to_arrays().items()})
    meta = {"targets": list(prepared.train_targets), "memory_targets": list(prepared.memory_targets),
            "split_rule": split.rule, "test_stimuli": [str(s) for s in split.test_stimuli],
            "stimuli_dir": str(prepared.stimuli_dir), "tiny": bool(prepared.tiny),
            "text_spaces": {name: space.to_json() for name, space in prepared.text_spaces.items()}}
    return {"trials": write_tsv(folder / "trials.tsv", prepared.trials),
            "targets": _save_npz(folder / "targets.npz", arrays),
            "prepared": write_json(folder / "prepared.json", meta)}


def load_prepared(trials_file, targets_file, prepared_file) -> PreparedTrials:
    from .text import TfidfTextSpace

    meta = json.loads(Path(prepared_file).read_text())
    arrays = _load_npz(targets_file)
    split = DecodingSplit(train=arrays["split_train"], test=arrays["split_test"], imagery=arrays["split_imagery"],
                          imagery_folds=arrays.get("split_imagery_folds"), rule=meta["split_rule"],
                          test_stimuli=list(meta["test_stimuli"]))
    basis = None
    if "basis/pixel_pca_mean" in arrays:
        basis = PixelBasis.from_arrays({k[len("basis/"):]: v for k, v in arrays.items() if k.startswith("basis/")})
    return PreparedTrials(
        trials=read_table(trials_file), split=split, stimuli_dir=Path(meta["stimuli_dir"]),
        train_targets={space: arrays[f"train/{space}"] for space in meta["targets"]},
        memory_rows=arrays["memory_rows"],
        memory_targets={space: arrays[f"memory/{space}"] for space in meta["memory_targets"]},
        text_spaces={name: TfidfTextSpace.from_json(data) for name, data in meta["text_spaces"].items()},
        pixel_basis=basis, tiny=bool(meta["tiny"]))


# --- stage `fit` -----------------------------------------------------------------------------------------------
def save_fitted(folder, fitted: FittedDecoders, prepared: PreparedTrials) -> dict:
    """``decoder-<space>.safetensors`` (+ .json) per target, in target order, the pixel basis (if any) with the
    pixel decoder; ``finetuned.npz`` (out-of-fold predictions of the fine-tuning trials)."""
    folder = Path(folder)
    models = []
    for space, decoder in fitted.decoders.items():
        extra = prepared.pixel_basis.to_arrays() if space == "pixels" and prepared.pixel_basis is not None else None
        models.append(decoder.save(folder / f"decoder-{space}.safetensors", extra_arrays=extra))
    arrays = {}
    for space, by_row in fitted.finetuned.items():
        rows = sorted(by_row)
        arrays[f"rows/{space}"] = np.asarray(rows, dtype=np.int64)
        arrays[f"pred/{space}"] = np.stack([by_row[r] for r in rows])
    return {"models": models, "finetuned": _save_npz(folder / "finetuned.npz", arrays)}


def load_decoder(path, device="cpu", shared_decoders=()):
    """A fitted decoder from its ``.safetensors`` + ``.json`` (a ``BrainDecoder``, or a participant's map on
    a group shared model: the group model files are needed then)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("method") != "shared":
        from .decoder import BrainDecoder

        return BrainDecoder.load(path, device=device)
    from safetensors.numpy import load_file

    from .shared import ParticipantMap, participant_decoder

    arrays = load_file(str(path))
    decoder = participant_decoder(shared_decoders, meta["FeatureSpace"], seed=meta.get("seed", 0), device=device)
    decoder.map = ParticipantMap.from_arrays(arrays, "map.", int(meta["info"]["n_train"]))
    decoder.head_coef, decoder.head_intercept = arrays["head_coef"], arrays["head_intercept"]
    decoder.feature_mean, decoder.feature_sd = arrays["feature_mean"], arrays["feature_sd"]
    decoder.info = meta["info"]
    decoder.load_own(arrays, meta.get("own_decoder"))  # imagery="ensemble": its own-data decoder
    return decoder


def load_fitted(models, finetuned_file, targets, device="cpu", shared_decoders=()) -> FittedDecoders:
    decoders = {space: load_decoder(path, device, shared_decoders) for space, path in zip(targets, models)}
    arrays = _load_npz(finetuned_file)
    finetuned = {}
    for space in targets:
        if f"rows/{space}" in arrays:
            finetuned[space] = dict(zip(arrays[f"rows/{space}"].tolist(), arrays[f"pred/{space}"]))
    return FittedDecoders(decoders, finetuned)


# --- stage `predict` -------------------------------------------------------------------------------------------
def save_predictions(folder, predictions: ItemPredictions) -> dict[str, Path]:
    """``predictions.npz`` (decoded features per space; items as flat trial rows + offsets) and
    ``items.tsv`` (the predictions table so far)."""
    folder = Path(folder)
    lengths = np.array([len(g) for g in predictions.items], dtype=np.int64)
    arrays = {"item_rows": np.concatenate(predictions.items).astype(np.int64),
              "item_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}
    arrays.update({f"features/{space}": values for space, values in predictions.features.items()})
    write_json(folder / "predictions.json", {"spaces": list(predictions.features)})
    return {"predictions": _save_npz(folder / "predictions.npz", arrays),
            "table": write_tsv(folder / "items.tsv", predictions.table)}


def load_predictions(predictions_file, table_file) -> ItemPredictions:
    arrays = _load_npz(predictions_file)
    meta = json.loads(Path(predictions_file).with_suffix(".json").read_text())
    rows, offsets = arrays["item_rows"], arrays["item_offsets"]
    items = [rows[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    table = read_table(table_file)
    if "n_repeats" in table:
        table["n_repeats"] = table["n_repeats"].astype(int)
    return ItemPredictions(items=items, features={s: arrays[f"features/{s}"] for s in meta["spaces"]}, table=table)


# --- stage `generate` ------------------------------------------------------------------------------------------
def save_reconstructions(folder, recon: Reconstructions, features: np.ndarray) -> dict:
    """``recon/item-NNNN.png`` (one per item), ``reconstructions.json`` (sidecar metadata, the conditioning
    space, tiny models) and ``features.npy`` (the decoded features that conditioned the generator)."""
    folder = Path(folder)
    images = [save_png(folder / "recon" / f"item-{i:04d}.png", image) for i, image in enumerate(recon.images)]
    meta = write_json(folder / "reconstructions.json", {"feature_space": recon.feature_space, "tiny": bool(recon.tiny),
                                                        "metadata": recon.metadata})
    return {"images": images, "meta": meta, "features": save_npy(folder / "features.npy", features)}


def load_reconstructions(images, meta_file) -> Reconstructions:
    from PIL import Image

    meta = json.loads(Path(meta_file).read_text())
    loaded = []
    for path in images:
        with Image.open(path) as image:
            loaded.append(image.convert("RGB") if image.mode != "RGB" else image.copy())
    return Reconstructions(loaded, meta["metadata"], meta["feature_space"], tiny=bool(meta["tiny"]))
