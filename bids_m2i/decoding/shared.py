"""Shared-subject decoding: per-participant linear maps into one shared space, one shared mapping to features.

MindEye2 (Scotti et al. 2024) pretrains a shared backbone across participants, each participant's voxels
entering through its own linear map, then fits a new participant from one hour of data. This is the linear,
closed-form counterpart, sized for CPUs (seconds to minutes on 2 cores):

1. **Shared feature subspace** (group reduced-rank ridge; Mukherjee & Zhu 2011 for one participant). Features
   are standardised with the pooled mean and sd of every participant's training trials. Each participant's
   own ridge (one alpha per feature, chosen by leave-one-stimulus-out CV) gives fitted features; the top
   ``k`` eigenvectors of the sum over participants of their (per-trial averaged) second-moment matrices are
   the ``k`` feature directions that brains predict best, *jointly*: the basis ``B`` (k x d, orthonormal rows).
2. **Per-participant maps** into that space: a ridge from the participant's own z-scored voxels to its
   latent targets ``Y_std Bᵀ`` (k targets, one penalty for all of them by default, grouped CV). Voxel counts
   differ freely; no template and no shared stimuli are needed, because participants are linked only
   through the feature space. Which voxels: by default the count is chosen by cross-validation among the
   most reliable (training ncsnr), as for the own-data decoder (:func:`select_voxels`). A model may instead
   ask for a new participant's map as the posterior mean of an inverted encoding model on the same voxels
   (``participant_map="inversion"``, :mod:`.shared_inversion`; measured level with the ridge map, not the
   default).
3. **From the shared space to features**: the projection ``z B`` by default (reduced-rank ridge), or
   (``head="ridge"``) a shared ridge head fitted on every participant's *out-of-fold* latent predictions
   (k-fold by stimulus). Why the defaults: ``train_shared_model`` and docs/decoding.md.

A new participant (seen in training or not) gets only step 2 on its own training trials: ``v x k`` weights
instead of ``v x d``, toward targets the group found predictable. Optionally a ridge head is fine-tuned
with the new participant's out-of-fold latent predictions added to the group's (kept as sufficient
statistics in the model file). Held-out perception items are decoded by that map; a model trained with
``imagery="ensemble"`` (the default; ``"map"``: the map for every item) decodes imagery items by the mean of the
map's pattern and that of an own-data ridge fitted on the same trials (model averaging of two decoders with
different biases, each pattern of unit norm): imagery is another condition, for which no cross-validation on
perception can weigh the two. Measured: better imagery from memory on most checks, near or above the own-data
decoder where the map alone fell behind, so it is the default since issue 15's fourth pass (docs/decoding.md).

Where participants share stimuli, the CV groups of the head are the stimulus identities across participants
(an image's repeats in every participant are held out together), and the model keeps the group's mean latent
response to each training stimulus: a new participant without repeated training stimuli (no ncsnr) but with
stimuli the group saw gets its voxels ranked by that response (:mod:`.shared_stimuli`). Nothing requires
shared stimuli: without them the voxel rule is the own-data decoder's (ncsnr, or every voxel).

Files: ``save``/``load`` write ``.safetensors`` (arrays) + ``.json`` (participants, trials, settings, feature
space and its dimension). Everything is numpy/torch on arrays: no BIDS, no nipype.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadDataError, InputMissingError, UsageError
from ..utils.atomic import atomic_path, write_json
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv, make_cv_groups, ridge_predict
from .voxels import VoxelScaler

#: ``top_k="auto"``: the voxel count is chosen by cross-validation (as for the own-data decoder)
AUTO = "auto"

LOG = logging.getLogger("m2i.decoding")

FORMAT = "m2i-shared-decoder/1"
#: size of the shared space. On the simulator's demo (pixels 32 x 32 x 3, 5 participants; seed 0, the seed the
#: method was tuned on) 8, 16, 32 and 64 components scored within 0.011 two-way of each other on perception, 64
#: best on imagery from memory (docs/decoding.md); with one penalty for all components (below) the weak
#: components are no longer shrunk to nothing, so more of them carry detail.
DEFAULT_COMPONENTS = 64
#: how the shared space is turned into features: ``projection`` (``z B``, the reduced-rank ridge estimator) or
#: ``ridge`` (a head fitted on the group's out-of-fold latents; MindEye2's shared backbone, linear)
HEADS = ("projection", "ridge")
#: penalty grid of the shared head (latent predictions have sd ~ 0.1-1 and there are thousands of rows)
HEAD_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-1.0, 5.01, 0.5))
CV_FOLDS = 5
#: at most this many leading feature axes enter the search for the shared space
FEATURE_AXES = 256
#: how a participant's map into the shared space is fitted (the model's ``Settings.participant_map``):
#: ``ridge`` (a decoding ridge, one penalty) or ``inversion`` (the posterior mean of an encoding model,
#: :mod:`.shared_inversion`; measured and not the default, docs/decoding.md)
PARTICIPANT_MAPS = ("ridge", "inversion")
#: how a participant decodes items other than held-out perception (imagery): ``map`` (the shared map, as for
#: perception) or ``ensemble`` (the default: the mean of the shared map's and an own-data ridge's decoded
#: patterns, each of unit norm about the training mean). Held-out perception items always use the shared map.
#: ``ensemble`` is the default since issue 15's fourth pass: against the map it raised imagery-from-memory two-way
#: on 13 of 15 left-out participants of the 20-item check (seeds 0, 1, 3, 7, fresh 11; 1 level, 1 down, mean
#: +0.013) and kept it near or above the own-data decoder where the map alone fell behind (docs/decoding.md,
#: "The margin per participant"). ``train_shared_model(imagery=...)`` / ``--shared-imagery`` choose; recorded in ``Settings``.
IMAGERY_RULES = ("map", "ensemble")
DEFAULT_IMAGERY = "ensemble"
#: the rule of group models written before ``Settings.imagery`` existed (they decoded imagery with the map)
LEGACY_IMAGERY = "map"


def _check_choice(value, choices: tuple[str, ...], what: str, *, path=None, hint: str | None = None) -> None:
    """``value`` is one of ``choices``, else a usage error naming ``what`` (exit 64)."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}", path=path, hint=hint or f"use one of {', '.join(choices)}")


@dataclass
class ParticipantData:
    """One participant's training trials.

    betas : (n, v_p) in-mask betas of training trials (v_p differs between participants)
    features : (n, d) target features of each trial's stimulus (same space and d for everyone)
    stimuli : (n,) stimulus identity (repeats -> grouped CV); optional
    """

    label: str
    betas: np.ndarray
    features: np.ndarray
    stimuli: np.ndarray | None = None


@dataclass
class ParticipantMap:
    """Voxels of one participant -> shared space: ``z = scaler(betas) @ coef + intercept``."""

    scaler: VoxelScaler
    coef: np.ndarray  # (v_kept, k)
    intercept: np.ndarray  # (k,)
    alpha: np.ndarray  # (k,)
    n_train: int

    def latent(self, betas: np.ndarray) -> np.ndarray:
        return ridge_predict(self.scaler.transform(betas), self.coef, self.intercept)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}{k}": v for k, v in self.scaler.to_arrays().items()}
        arrays.update({f"{prefix}coef": self.coef, f"{prefix}intercept": self.intercept,
                       f"{prefix}alpha": np.asarray(self.alpha, np.float64)})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, n_train: int) -> "ParticipantMap":
        scaler = VoxelScaler.from_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        return cls(scaler, arrays[f"{prefix}coef"], arrays[f"{prefix}intercept"], arrays[f"{prefix}alpha"], n_train)


@dataclass
class SharedModel:
    """The group model: feature standardisation, shared basis, shared head and every participant's map."""

    feature_space: str
    feature_info: dict  # e.g. {"pixel_size": 32} or {"clip_model": "ViT-H-14"}
    feature_mean: np.ndarray  # (d,) pooled over the group's training trials
    feature_scale: np.ndarray  # (d,)
    basis: np.ndarray  # (k, d), orthonormal rows, standardised feature units
    head_coef: np.ndarray  # (k, d)
    head_intercept: np.ndarray  # (d,)
    head_alpha: np.ndarray  # (d,)
    head_gram: np.ndarray  # (k + 1, k + 1) sum of [z 1]ᵀ[z 1] over the head's training rows
    head_cross: np.ndarray  # (k + 1, d) sum of [z 1]ᵀ y_std
    maps: dict[str, ParticipantMap] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # the group's mean latent response to each of its training stimuli (shared_stimuli.py): ranks a new
    # participant's voxels when its training stimuli are the group's; empty in files written before
    stimulus_names: list = field(default_factory=list)
    stimulus_latents: np.ndarray | None = None
    # (k, k) covariance of the latents over the group's training trials (the prior of an inverted encoding
    # model, shared_inversion.py); None in files written before
    latent_cov: np.ndarray | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.basis.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[0])

    def features_from_latent(self, latent: np.ndarray) -> np.ndarray:
        standard = ridge_predict(latent, self.head_coef, self.head_intercept)
        return (standard * self.feature_scale + self.feature_mean).astype(np.float32)

    def predict(self, participant: str, betas: np.ndarray) -> np.ndarray:
        """Features (n, d) of a participant of the group from its betas (n, v_p)."""
        if participant not in self.maps:
            raise UsageError(f"participant {participant!r} is not in the shared model",
                             hint="fit it first with fit_new_participant")
        return self.features_from_latent(self.maps[participant].latent(betas))

    def check_features(self, feature_space: str, feature_dim: int, feature_info: dict | None = None,
                       path=None) -> None:
        """Usage error (exit 64) unless the model decodes ``feature_space`` with this dimension and settings."""
        where = f" ({path})" if path else ""
        if feature_space != self.feature_space:
            raise UsageError(f"The shared decoder{where} decodes '{self.feature_space}' features, not "
                             f"'{feature_space}'", path=path,
                             hint=f"pass the desc-shared{feature_space}_model file, or --target {self.feature_space}")
        mismatch = [f"{k} {self.feature_info[k]} in the model vs {v} here" for k, v in (feature_info or {}).items()
                    if k in self.feature_info and self.feature_info[k] != v]
        if feature_dim != self.feature_dim:
            mismatch.insert(0, f"{self.feature_dim} feature dimensions in the model vs {feature_dim} here")
        if mismatch:
            raise UsageError(f"The shared {feature_space} decoder{where} was trained on other features: "
                             + "; ".join(mismatch), path=path,
                             hint="retrain it at the group level with the same version and settings")

    # ------------------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """``path`` (.safetensors) + ``path`` with .json (participants, trials, settings, feature space)."""
        from safetensors.numpy import save_file

        path = Path(path)
        arrays = {"feature_mean": self.feature_mean, "feature_scale": self.feature_scale, "basis": self.basis,
                  "head_coef": self.head_coef, "head_intercept": self.head_intercept,
                  "head_alpha": np.asarray(self.head_alpha, np.float64), "head_gram": self.head_gram,
                  "head_cross": self.head_cross}
        order = sorted(self.maps)
        for i, label in enumerate(order):
            arrays.update(self.maps[label].to_arrays(f"map{i}."))
        if self.stimulus_names:
            arrays["stimulus_latents"] = np.asarray(self.stimulus_latents, np.float32)
        if self.latent_cov is not None:
            arrays["latent_cov"] = np.asarray(self.latent_cov, np.float64)
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp))
        meta = {
            "Format": FORMAT, "FeatureSpace": self.feature_space, "FeatureDim": self.feature_dim,
            "FeatureInfo": self.feature_info, "Components": self.n_components,
            "Participants": [{"label": label, "index": i, "n_train": self.maps[label].n_train,
                              "n_voxels": int(len(self.maps[label].scaler.columns))}
                             for i, label in enumerate(order)],
            "Settings": self.settings, "Info": self.info, "Stimuli": list(self.stimulus_names),
        }
        write_json(path.with_suffix(".json"), meta)
        return path

    @classmethod
    def load(cls, path) -> "SharedModel":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        meta = read_shared_sidecar(path)
        try:
            arrays = load_file(str(path))
        except (ValueError, SafetensorError, OSError) as exc:
            raise UsageError(f"not a readable shared decoder: {path} ({exc})", path=path,
                             hint="pass an OUT/group/decoding/desc-shared<target>_model.safetensors file") from exc
        maps = {p["label"]: ParticipantMap.from_arrays(arrays, f"map{p['index']}.", p["n_train"])
                for p in meta["Participants"]}
        return cls(feature_space=meta["FeatureSpace"], feature_info=meta.get("FeatureInfo", {}),
                   feature_mean=arrays["feature_mean"], feature_scale=arrays["feature_scale"], basis=arrays["basis"],
                   head_coef=arrays["head_coef"], head_intercept=arrays["head_intercept"],
                   head_alpha=arrays["head_alpha"], head_gram=arrays["head_gram"], head_cross=arrays["head_cross"],
                   maps=maps, settings=meta.get("Settings", {}), info=meta.get("Info", {}),
                   stimulus_names=list(meta.get("Stimuli", [])) if "stimulus_latents" in arrays else [],
                   stimulus_latents=arrays.get("stimulus_latents"), latent_cov=arrays.get("latent_cov"))


# ----------------------------------------------------------------------------------------------------------
# helpers
def read_shared_sidecar(path) -> dict:
    """The JSON sidecar of a shared decoder file, checked: both files exist (else exit 66) and the sidecar is
    JSON of our format (else exit 64). Used by the loader and by the start-up check of ``--shared-decoder``."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if path.is_dir():  # "not found" sent the user to check the spelling of a path that is there
        raise UsageError(f"--shared-decoder {path} is a folder, not a file", path=path,
                         hint="give the file itself: OUT/group/decoding/desc-shared<target>_model.safetensors")
    if not path.is_file():
        raise InputMissingError(f"shared decoder not found: {path} (+ .json sidecar)", path=path,
                                hint="train it with `m2i BIDS OUT group --train-shared-decoder`")
    if not sidecar.is_file():  # the weights alone were copied: say which file is missing, not the one given
        raise InputMissingError(f"the shared decoder {path.name} has no JSON sidecar: {sidecar} not found",
                                path=sidecar, hint=f"copy {sidecar.name} from the group level's OUT/group/decoding/ "
                                "next to it (it holds the feature space and the voxel selection)")
    from ..utils.paths import check_readable

    for item in (path, sidecar):  # another user's file was 64 "not a readable shared decoder sidecar"
        check_readable(item, hint="make it readable by this user (e.g. `chmod a+r FILE`, or ask its owner to add "
                       "you to its group), or pass a copy of your own (the .safetensors with its .json)")
    try:
        meta = json.loads(sidecar.read_text())
    except (ValueError, OSError) as exc:
        raise UsageError(f"not a readable shared decoder sidecar: {sidecar} ({exc})", path=sidecar,
                         hint="pass an OUT/group/decoding/desc-shared<target>_model.safetensors file") from exc
    if not isinstance(meta, dict) or meta.get("Format") != FORMAT:
        found = meta.get("Format") if isinstance(meta, dict) else None
        raise UsageError(f"{path} is not a shared decoder (format {found!r}, expected {FORMAT})", path=path,
                         hint="pass a desc-shared<target>_model.safetensors file from the group level")
    _check_sidecar_fields(meta, sidecar)
    return meta


def _check_sidecar_fields(meta: dict, sidecar: Path) -> None:
    """The fields the loader reads, with their types: a sidecar of our format edited by hand or merged badly
    (``"FeatureInfo": null``, no ``FeatureSpace``) stopped the run with exit 1 ("unexpected failure:
    TypeError") at start-up, or passed it and failed at the decoding stage after preprocessing and the GLM."""
    from ..config import TARGETS

    def damaged(what: str) -> BadDataError:
        return BadDataError(f"The shared decoder sidecar {sidecar} is damaged: {what}", path=sidecar,
                            hint="copy it again from the group level's OUT/group/decoding/ (with its .safetensors), "
                            "or retrain it with `m2i BIDS OUT group --train-shared-decoder`")

    if meta.get("FeatureSpace") not in TARGETS:
        raise damaged(f"\"FeatureSpace\" is {json.dumps(meta.get('FeatureSpace'))}, expected one of "
                      + ", ".join(TARGETS))
    for key, kind, name in (("FeatureInfo", dict, "an object"), ("Settings", dict, "an object"),
                            ("Info", dict, "an object"), ("Stimuli", list, "a list")):
        if key in meta and not isinstance(meta[key], kind):
            raise damaged(f"\"{key}\" is {json.dumps(meta[key])[:60]}, expected {name}")
    participants = meta.get("Participants")
    fields = (("label", str), ("index", int), ("n_train", int))
    if not isinstance(participants, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), kind) for k, kind in fields) for p in participants):
        raise damaged("\"Participants\" must be a list of objects with \"label\", \"index\" and \"n_train\"")



def ridge_fixed(X: np.ndarray, Y: np.ndarray, alpha, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with fixed per-target alphas through one eigendecomposition of the smaller Gram matrix
    (``X Xᵀ`` when rows <= columns): cheap for many targets and for p >> n, unlike a primal solve."""
    import torch

    from ..utils.torch_runtime import torch_threads

    with torch_threads(n_threads), torch.no_grad():
        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        Y = torch.as_tensor(np.asarray(Y), dtype=torch.float64)
        x_mean, y_mean = X.mean(0), Y.mean(0)
        Xc, Yc = X - x_mean, Y - y_mean
        alpha = torch.as_tensor(np.broadcast_to(np.asarray(alpha, np.float64), (Y.shape[1],)).copy())
        if Xc.shape[0] <= Xc.shape[1]:
            s, U = torch.linalg.eigh(Xc @ Xc.T)
            coef = Xc.T @ (U @ ((U.T @ Yc) / (s.clamp(min=0)[:, None] + alpha[None, :])))
        else:
            s, V = torch.linalg.eigh(Xc.T @ Xc)
            coef = V @ ((V.T @ (Xc.T @ Yc)) / (s.clamp(min=0)[:, None] + alpha[None, :]))
        intercept = y_mean - x_mean @ coef
        return coef.numpy().astype(np.float32), intercept.numpy().astype(np.float32)


def _augment(Z: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(Z, np.float64), np.ones((len(Z), 1))], axis=1)


def head_alphas_by_cv(Z: np.ndarray, Y: np.ndarray, alphas, groups=None, folds: int = CV_FOLDS, seed: int = 0):
    """One penalty per feature for the head, by k-fold CV grouped by stimulus (an image's rows in every
    participant are held out together), from per-fold sufficient statistics: (k+1)-sized solves only."""
    A = _augment(Z)
    Y = np.asarray(Y, np.float64)
    labels, _ = make_cv_groups(len(A), int(min(folds, len(np.unique(groups)) if groups is not None else len(A))),
                               groups, seed)
    stats = []
    for fold in np.unique(labels):
        rows = labels == fold
        stats.append((A[rows].T @ A[rows], A[rows].T @ Y[rows], (Y[rows] ** 2).sum(0)))
    gram = sum(s[0] for s in stats)
    cross = sum(s[1] for s in stats)
    errors = np.zeros((len(alphas), Y.shape[1]))
    for i, a in enumerate(alphas):
        for g, c, yy in stats:
            coef, intercept = solve_head(gram - g, cross - c, np.full(Y.shape[1], a))
            W = np.concatenate([coef, intercept[None]], 0).astype(np.float64)
            errors[i] += yy - 2 * (W * c).sum(0) + (W * (g @ W)).sum(0)
    return np.asarray(alphas, np.float64)[np.argmin(errors, 0)], gram, cross


def solve_head(gram: np.ndarray, cross: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge head from sufficient statistics of ``[z 1]``: the intercept (last row) unpenalised."""
    k = gram.shape[0] - 1
    penalty = np.zeros(k + 1)
    penalty[:k] = 1.0
    coef = np.empty((k + 1, cross.shape[1]))
    for a in np.unique(alpha):
        cols = np.flatnonzero(alpha == a)
        coef[:, cols] = np.linalg.solve(gram + a * np.diag(penalty), cross[:, cols])
    return coef[:k].astype(np.float32), coef[k].astype(np.float32)


@dataclass
class KFoldRidge:
    coef: np.ndarray  # (p, t)
    intercept: np.ndarray  # (t,)
    alpha: np.ndarray  # (t,)
    out_of_fold: np.ndarray  # (n, t): each row predicted without its fold, at the chosen alpha


def kfold_ridge(X: np.ndarray, Y: np.ndarray, alphas, groups=None, folds: int = CV_FOLDS, seed: int = 0,
                n_threads: int | None = None, single_penalty: bool = False) -> KFoldRidge:
    """Ridge with one alpha per target chosen by k-fold CV grouped by stimulus, in the dual (kernel) form.

    ``single_penalty``: one alpha for all targets (the one of least CV error summed over targets), so the
    targets keep their relative scale in the predictions (see :func:`train_shared_model`).

    One Gram matrix ``X Xᵀ`` serves every fold (each fold's centring is applied to it algebraically) and one
    eigendecomposition per fold serves every alpha, so the out-of-fold predictions at the chosen alphas (which
    train the shared head) come for free. Cost: O(n² v) once, then O(n³) per fold; suited to n <= ~5,000.
    """
    import torch

    from ..utils.torch_runtime import torch_threads

    n = len(X)
    groups = None if groups is None else np.asarray(groups).astype(str)
    k = int(min(folds, n if groups is None else len(np.unique(groups))))
    if k < 2:
        raise BadDataError("shared decoder: need at least 2 distinct training stimuli per participant")
    labels, _ = make_cv_groups(n, k, groups, seed)
    alphas = np.asarray(alphas, np.float64)
    with torch_threads(n_threads), torch.no_grad():
        Xt = torch.as_tensor(np.asarray(X, np.float32))
        G = (Xt @ Xt.T).double()
        Yt = torch.as_tensor(np.asarray(Y, np.float64))
        t = Yt.shape[1]
        errors = torch.zeros((len(alphas), t), dtype=torch.float64)
        oof = torch.zeros((len(alphas), n, t), dtype=torch.float32)
        for fold in np.unique(labels):
            held = torch.as_tensor(labels == fold)
            tr = ~held
            g_tr = G[:, tr].mean(1)  # x_i . mean(x_train)
            c = G[tr][:, tr].mean()
            K = G - g_tr[:, None] - g_tr[None, :] + c  # centred on the training rows' mean
            s, U = torch.linalg.eigh(K[tr][:, tr])
            s = s.clamp(min=0)
            y_mean = Yt[tr].mean(0)
            Q = U.T @ (Yt[tr] - y_mean)
            KU = K[held][:, tr] @ U
            for i, a in enumerate(alphas):
                pred = y_mean + KU @ (Q / (s[:, None] + a))
                errors[i] += ((Yt[held] - pred) ** 2).sum(0)
                oof[i, held] = pred.float()
        best = torch.argmin(errors, 0)
        if single_penalty:
            best = torch.full_like(best, int(torch.argmin(errors.sum(1))))
        alpha = alphas[best.numpy()]
        out = oof[best, torch.arange(n)[:, None], torch.arange(t)[None, :]].numpy()
        del oof
    coef, intercept = ridge_fixed(X, Y, alpha, n_threads)  # the final fit on every row
    return KFoldRidge(coef, intercept, alpha, out)


def unexplained_share(fit: KFoldRidge, Y: np.ndarray) -> float:
    """Cross-validated error of a map: the share of its targets' total variance that the out-of-fold
    predictions leave unexplained. Summed over targets (not averaged per target) because the latent targets
    are coordinates on orthonormal feature directions: this is the decoded features' squared error within
    the shared subspace, the quantity the map's single penalty minimises."""
    Y = np.asarray(Y, np.float64)
    total = ((Y - Y.mean(0)) ** 2).sum()
    return float(((Y - fit.out_of_fold) ** 2).sum() / max(total, 1e-30))


def select_voxels(betas: np.ndarray, targets: np.ndarray, stimuli, top_k, *, alphas=DEFAULT_ALPHAS,
                  folds: int = CV_FOLDS, seed: int = 0, n_threads: int | None = None,
                  single_penalty: bool = False) -> tuple[VoxelScaler, KFoldRidge | None, dict | None]:
    """The voxels of one participant's map: ``top_k`` an int (the most reliable by training ncsnr) or None
    (all), or ``"auto"``: the count chosen as for the own-data decoder
    (:func:`~bids_m2i.decoding.decoder.choose_voxel_count`: ncsnr ranking on these training trials, nested
    halvings of the mask), with the map itself (``kfold_ridge`` with these settings, grouped by stimulus) as
    the estimator and :func:`unexplained_share` as the error. Why: a whole-brain mask holds mostly voxels
    without stimulus information, whose noise the ridge shrinks but does not remove; with few trials that
    noise costs more than the missing voxels. ``"auto"`` keeps all voxels when no training stimulus repeats
    (no ncsnr). Returns the scaler, the map's fit at the chosen count (or None) and the search summary."""
    from .decoder import choose_voxel_count

    labels = None if stimuli is None else np.asarray(stimuli).astype(str)
    repeats = labels is not None and len(np.unique(labels)) < len(labels)
    if top_k != AUTO or not repeats:
        return VoxelScaler.fit(betas, labels, None if top_k == AUTO else top_k), None, None

    def fit_map(X, Y, groups):
        fit = kfold_ridge(X, Y, alphas, groups, folds, seed, n_threads, single_penalty)
        return fit, unexplained_share(fit, Y)

    search = choose_voxel_count(betas, targets, labels, alphas, fit=fit_map, n_threads=n_threads, seed=seed)
    summary = search.summary()
    summary["rule"] = ("auto: ncsnr ranking, count chosen by the map's grouped-CV error (share of the targets' "
                       "variance unexplained)")
    return search.scaler, search.result, summary


# ----------------------------------------------------------------------------------------------------------
# training


def train_shared_model(participants: list[ParticipantData], feature_space: str, *,
                       n_components: int = DEFAULT_COMPONENTS, alphas=DEFAULT_ALPHAS, head_alphas=HEAD_ALPHAS,
                       top_k: int | str | None = AUTO, feature_info: dict | None = None, folds: int = CV_FOLDS,
                       seed: int = 0, device="cpu", n_threads: int | None = None, head: str = "projection",
                       single_penalty: bool = True, participant_map: str = "ridge",
                       imagery: str = DEFAULT_IMAGERY) -> SharedModel:
    """Train the shared model on several participants (at least 2) whose voxel counts may differ.

    ``single_penalty``: each participant's map uses one ridge penalty for all ``k`` latent targets (chosen by
    grouped CV on their summed error) instead of one per target. Per-target penalties minimise each target's
    squared error, which shrinks the weakly predicted components to almost nothing; the decoded pattern then
    keeps only the few strongest (coarse) components, which costs identification (two-way) and imagery,
    whose signal is weaker than perception's. One penalty keeps the components' relative scale.
    ``head``: ``projection`` decodes features as ``z B`` (B orthonormal: the reduced-rank ridge estimator of
    Mukherjee & Zhu 2011 with a group-estimated subspace); ``ridge`` fits a head on the group's out-of-fold
    latents, which re-weights the components by the *group's perception* reliability: it transferred worse
    to a new participant and to imagery on the simulator (docs/decoding.md).
    ``top_k``: each participant's voxels (:func:`select_voxels`); with ``"auto"`` the count is chosen by the
    grouped-CV error of the participant's own ridge of step 1 (the ridge whose fit defines the shared space).
    ``participant_map``: how a participant fitted *on* this model (``fit_new_participant``) gets its map:
    ``ridge`` or ``inversion`` (:mod:`.shared_inversion`); recorded in ``Settings``. The group's own maps are
    ridges either way (their out-of-fold latents and the stimulus responses are defined with them).
    ``imagery``: how a participant fitted on this model decodes imagery items (:data:`IMAGERY_RULES`); recorded
    in ``Settings``.
    """
    _check_choice(imagery, IMAGERY_RULES, "imagery rule")
    _check_choice(head, HEADS, "shared head")
    _check_choice(participant_map, PARTICIPANT_MAPS, "participant map")
    start = time.monotonic()
    if len(participants) < 2:
        raise UsageError(f"a shared decoder needs at least 2 participants with betas, got {len(participants)}",
                         hint="run `participant --stop-after glm` for more participants first")
    dims = {p.features.shape[1] for p in participants}
    if len(dims) != 1:
        raise BadDataError(f"participants' features have different dimensions: {sorted(dims)}")
    labels = [p.label for p in participants]
    if len(set(labels)) != len(labels):
        raise UsageError(f"participant labels repeat: {labels}")
    for p in participants:
        if len(p.betas) != len(p.features):
            raise BadDataError(f"sub-{p.label}: {len(p.betas)} training betas but {len(p.features)} feature rows")
    d = dims.pop()
    all_features = np.concatenate([np.asarray(p.features, np.float64) for p in participants])
    mean = all_features.mean(0)
    scale = all_features.std(0)
    scale = np.where(scale > 1e-8 * max(scale.max(), 1e-30), scale, 1.0)
    del all_features
    k = int(min(n_components, d, min(len(p.betas) for p in participants) - 1))
    if k < 1:
        raise BadDataError("shared decoder: too few training trials")

    # 0. features on their leading principal axes (all of them when d is small): stage 1 then fits q, not d,
    # targets (3072 pixels -> 256 axes; the feature directions that brains predict live among the leading ones)
    import torch

    standard = {p.label: ((np.asarray(p.features, np.float64) - mean) / scale).astype(np.float32) for p in participants}
    stacked = torch.as_tensor(np.concatenate(list(standard.values())))
    q = int(min(d, FEATURE_AXES, len(stacked) - 1))
    if q < d:
        torch.manual_seed(seed)
        _, _, V = torch.svd_lowrank(stacked, q=q, niter=3, M=stacked.mean(0, keepdim=True))
        axes = V.T.numpy().astype(np.float32)  # (q, d) orthonormal rows
    else:
        axes = np.eye(d, dtype=np.float32)
    del stacked
    k = min(k, q)

    # 1. shared basis: the feature directions that the participants' own ridges predict, summed over people
    scalers, moment, selection = {}, np.zeros((q, q)), {}
    for p in participants:
        targets = standard[p.label] @ axes.T
        scaler, own, summary = select_voxels(p.betas, targets, p.stimuli, top_k, alphas=alphas, folds=folds,
                                             seed=seed, n_threads=n_threads)
        Xz = scaler.transform(p.betas)
        if own is None:
            own = kfold_ridge(Xz, targets, alphas, p.stimuli, folds, seed, n_threads)
        if summary is not None:
            selection[p.label] = summary
        fitted = ridge_predict(Xz, own.coef, own.intercept).astype(np.float64)
        moment += fitted.T @ fitted / len(fitted)  # every participant weighs the same
        scalers[p.label] = scaler
        del own, fitted, Xz
    eigenvalues, vectors = np.linalg.eigh(moment)
    order = np.argsort(eigenvalues)[::-1][:k]
    basis = (vectors[:, order].T @ axes).astype(np.float32)  # (k, d), orthonormal rows
    explained = float(eigenvalues[order].sum() / max(eigenvalues.sum(), 1e-30))

    # 2. each participant's map into the shared space; 3. the head from out-of-fold latents
    maps, latents, targets, groups = {}, [], [], []
    for p in participants:
        Xz = scalers[p.label].transform(p.betas)
        T = standard[p.label] @ basis.T
        fit = kfold_ridge(Xz, T, alphas, p.stimuli, folds, seed, n_threads, single_penalty)
        maps[p.label] = ParticipantMap(scalers[p.label], fit.coef, fit.intercept, fit.alpha, len(p.betas))
        latents.append(fit.out_of_fold)
        targets.append(standard[p.label])
        groups.append(np.asarray(p.stimuli).astype(str) if p.stimuli is not None else
                      np.array([f"{p.label}:{i}" for i in range(len(T))]))
        del Xz
    head_alpha, gram, cross = head_alphas_by_cv(np.concatenate(latents), np.concatenate(targets), head_alphas,
                                                np.concatenate(groups), folds, seed)
    head_coef, head_intercept = solve_head(gram, cross, head_alpha)
    if head == "projection":  # the statistics stay in the file: fine-tuning can still fit a ridge head
        head_coef, head_intercept = basis.copy(), np.zeros(d, np.float32)
    from .shared_stimuli import group_stimulus_latents

    stimulus_names, stimulus_latents = group_stimulus_latents(maps, participants)
    latent_cov = np.cov(np.concatenate([standard[p.label] @ basis.T for p in participants]).astype(np.float64),
                        rowvar=False).reshape(k, k)
    seconds = time.monotonic() - start
    LOG.info("shared %s decoder: %d participants, k=%d (%.0f %% of predicted variance), head alpha median %g, "
             "%.1f s", feature_space, len(participants), k, 100 * explained, float(np.median(head_alpha)), seconds)
    return SharedModel(
        feature_space=feature_space, feature_info=dict(feature_info or {}), feature_mean=mean.astype(np.float32),
        feature_scale=scale.astype(np.float32), basis=basis, head_coef=head_coef, head_intercept=head_intercept,
        head_alpha=head_alpha, head_gram=gram, head_cross=cross, maps=maps,
        stimulus_names=stimulus_names, stimulus_latents=stimulus_latents if stimulus_names else None,
        latent_cov=latent_cov,
        settings={"n_components": k, "alphas": [float(a) for a in alphas],
                  "head_alphas": [float(a) for a in head_alphas], "top_k": top_k, "folds": folds, "seed": seed,
                  "feature_axes": q, "head": head, "single_penalty": bool(single_penalty),
                  "participant_map": participant_map, "imagery": imagery,
                  "method": f"group reduced-rank ridge + per-participant ridge maps + {head} head"},
        info={"explained_predicted_variance": explained, "head_alpha_median": float(np.median(head_alpha)),
              "n_trials": int(sum(len(p.betas) for p in participants)), "seconds": round(seconds, 2),
              **({"voxel_selection": selection} if selection else {})})


# ----------------------------------------------------------------------------------------------------------
# a participant (new or not) on a trained model


class SharedParticipantDecoder:
    """A participant's decoder made of its own map into the shared space and the group's head.

    Same use as :class:`~bids_m2i.decoding.decoder.BrainDecoder`: ``fit(betas, features, labels)``,
    ``predict``, ``feature_mean`` / ``feature_sd`` (this participant's training features, for rescaling),
    ``fine_tune`` (imagery) and ``save``.
    """

    method = "shared"

    def __init__(self, model: SharedModel, *, fine_tune_head: bool = False, alphas=DEFAULT_ALPHAS,
                 device="cpu", n_threads: int | None = None, seed: int = 0, top_k: int | str | None = AUTO,
                 source: str = "", imagery: str | None = None):
        # the rule for imagery items: the argument, else the model's setting (files written before the setting
        # existed: the map, as they decoded then)
        imagery = imagery or model.settings.get("imagery", LEGACY_IMAGERY)
        _check_choice(imagery, IMAGERY_RULES, "imagery rule")
        self.imagery = imagery
        self.own = None  # imagery="ensemble": the own-data ridge decoder fitted on the same trials
        self.model = model
        self.fine_tune_head = fine_tune_head
        self.alphas = tuple(float(a) for a in alphas)
        self.device, self.n_threads, self.seed = device, n_threads, int(seed)
        self.top_k = top_k
        self.source = source
        self.map: ParticipantMap | None = None
        self.head_coef, self.head_intercept = model.head_coef, model.head_intercept
        self.feature_mean = self.feature_sd = None
        self.info: dict = {}

    @property
    def scaler(self):
        return None if self.map is None else self.map.scaler

    def fit(self, betas: np.ndarray, features: np.ndarray, labels=None) -> "SharedParticipantDecoder":
        """Fit this participant's map (and the head, with ``fine_tune_head``) on its training trials."""
        model = self.model
        betas = np.asarray(betas, np.float32)
        features = np.asarray(features, np.float32)
        model.check_features(model.feature_space, features.shape[1])
        if len(betas) != len(features):
            raise BadDataError(f"{len(betas)} training betas but {len(features)} feature rows")
        standard = (features - model.feature_mean) / model.feature_scale
        T = standard @ model.basis.T
        # models written before these settings existed used per-target penalties
        folds = model.settings.get("folds", CV_FOLDS)
        single_penalty = bool(model.settings.get("single_penalty", False))
        ranked = self._rank_by_group(betas, T, labels, folds) if single_penalty else None
        if ranked is not None:  # no repeats, but stimuli the group saw: the group's response ranks the voxels
            (scaler, selection), fit, ranking = ranked, None, "shared stimuli"
        else:
            scaler, fit, selection = select_voxels(betas, T, labels, self.top_k, alphas=self.alphas, folds=folds,
                                                   seed=self.seed, n_threads=self.n_threads,
                                                   single_penalty=single_penalty)
            ranking = "ncsnr" if selection is not None else "none"
        method = model.settings.get("participant_map", "ridge")  # files written before: ridge maps
        _check_choice(method, PARTICIPANT_MAPS, "participant map (in the shared decoder's settings)",
                      path=self.source or None,
                      hint=f"retrain it at the group level (known: {', '.join(PARTICIPANT_MAPS)})")
        inversion = None
        if method == "inversion":  # the map is the posterior mean of an encoding model, on the same voxels
            from .shared_inversion import inversion_map

            coef, intercept, inversion, out_of_fold = inversion_map(
                scaler.transform(betas), T, model.latent_cov, labels, folds=folds, seed=self.seed)
            fit = KFoldRidge(coef, intercept, np.full(T.shape[1], np.nan), out_of_fold.astype(np.float32))
        if fit is None:
            fit = kfold_ridge(scaler.transform(betas), T, self.alphas, labels, folds, self.seed, self.n_threads,
                              single_penalty)
        self.map = ParticipantMap(scaler, fit.coef, fit.intercept, fit.alpha, len(betas))
        if self.imagery == "ensemble":  # the own-data decoder, exactly as the participant level fits it
            from .decoder import BrainDecoder

            self.own = BrainDecoder("ridge", top_k=self.top_k, device=self.device, n_threads=self.n_threads,
                                    seed=self.seed).fit(betas, features, labels=labels)

        if self.fine_tune_head:
            A = _augment(fit.out_of_fold)
            self.head_coef, self.head_intercept = solve_head(model.head_gram + A.T @ A,
                                                             model.head_cross + A.T @ standard, model.head_alpha)
        self.feature_mean = features.mean(0)
        self.feature_sd = features.std(0)
        self.info = {"shared_model": self.source, "shared_participants": sorted(model.maps),
                     "components": model.n_components, "fine_tune_head": self.fine_tune_head,
                     "n_train": int(len(betas)), "n_voxels": int(len(scaler.columns)),
                     "n_features": int(features.shape[1]), "voxel_ranking": ranking, "participant_map": method,
                     "imagery": self.imagery}
        if self.own is not None:
            self.info["own_decoder"] = {"n_voxels": int(len(self.own.scaler.columns)),
                                        "alpha_median": self.own.info.get("alpha_median")}
        if inversion is None:
            self.info["alpha_median"] = float(np.median(fit.alpha))
        else:
            self.info["inversion"] = inversion
        if selection is not None:
            self.info["voxel_selection"] = selection
        return self

    def _rank_by_group(self, betas, T, labels, folds):
        """(scaler, summary) from the group's response to shared stimuli (:mod:`.shared_stimuli`), or None:
        only with ``top_k="auto"``, stimulus labels, no repeated training stimulus (else ncsnr ranks the
        voxels, as for the own-data decoder) and a model that stores the group's stimulus responses."""
        from .shared_stimuli import rank_by_group

        if self.top_k != AUTO or labels is None or not self.model.stimulus_names:
            return None
        names = np.asarray(labels).astype(str)
        if len(np.unique(names)) < len(names):
            return None
        return rank_by_group(betas, T, names, self.model.stimulus_names, self.model.stimulus_latents,
                             self.alphas, folds, self.seed)

    def _check_fitted(self):
        if self.map is None:
            raise UsageError("the shared decoder is not fitted to this participant yet")

    def latent(self, betas: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self.map.latent(betas)

    def predict(self, betas: np.ndarray, *, perception: bool = False) -> np.ndarray:
        """Betas (n, v) -> features (n, d) (not rescaled; see ``rescale_to_training``). ``perception``: True for
        held-out perception items, decoded by the shared map; other items (imagery) by the imagery rule."""
        shared = self._predict_shared(betas)
        if perception or self.own is None:
            return shared
        return ensemble_patterns(shared, self.own.predict(betas), self.feature_mean)

    def _predict_shared(self, betas: np.ndarray) -> np.ndarray:
        standard = ridge_predict(self.latent(betas), self.head_coef, self.head_intercept)
        return (standard * self.model.feature_scale + self.model.feature_mean).astype(np.float32)

    def fine_tune(self, betas: np.ndarray, features: np.ndarray, folds: np.ndarray, *, alphas=None,
                  epochs: int = 0) -> np.ndarray:
        """Imagery fine-tuning of this participant's map (as ``BrainDecoder.fine_tune`` for ridge: a ridge
        on the residuals of the latent targets, pulled back toward the perception map; penalty chosen by the
        other folds). Returns out-of-fold predictions (n, d); the map is then updated with all trials."""
        self._check_fitted()
        folds = np.asarray(folds)
        X = self.map.scaler.transform(betas)
        T = ((np.asarray(features, np.float32) - self.model.feature_mean) / self.model.feature_scale) @ \
            self.model.basis.T
        base = ridge_predict(X, self.map.coef, self.map.intercept)
        residual = T - base
        grid = self.alphas if alphas is None else alphas
        out = np.zeros((len(X), self.model.feature_dim), np.float32)
        for f in np.unique(folds):
            held = folds == f
            inner = folds[~held]
            part = fit_ridge_cv(X[~held], residual[~held], grid, groups=inner if len(np.unique(inner)) > 1 else None,
                                device=self.device, n_threads=self.n_threads)
            latent = base[held] + part.predict(X[held])
            standard = ridge_predict(latent, self.head_coef, self.head_intercept)
            out[held] = standard * self.model.feature_scale + self.model.feature_mean
        result = fit_ridge_cv(X, residual, grid, groups=folds, device=self.device, n_threads=self.n_threads)
        self.map.coef = self.map.coef + result.coef
        self.map.intercept = self.map.intercept + result.intercept
        self.info["fine_tune"] = {"n_trials": int(len(X)), "alpha_median": float(np.median(result.alpha)),
                                  "folds": int(len(np.unique(folds)))}
        return out

    def save(self, path, extra_arrays: dict | None = None) -> Path:
        """The participant's own decoder (its map + the head used), self-contained, + .json sidecar."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        arrays = self.map.to_arrays("map.")
        arrays.update(feature_mean=self.feature_mean, feature_sd=self.feature_sd,
                      shared_feature_mean=self.model.feature_mean, shared_feature_scale=self.model.feature_scale,
                      basis=self.model.basis, head_coef=self.head_coef, head_intercept=self.head_intercept)
        arrays.update(extra_arrays or {})
        own_meta = None
        if self.own is not None:
            arrays.update({f"own.{k}": v for k, v in self.own.scaler.to_arrays().items()})
            arrays.update({"own.coef": self.own.coef, "own.intercept": self.own.intercept,
                           "own.alpha": np.asarray(self.own.alpha, np.float64),
                           "own.feature_mean": self.own.feature_mean, "own.feature_sd": self.own.feature_sd})
            own_meta = {"alphas": list(self.own.alphas), "top_k": self.own.top_k, "penalty": self.own.penalty}
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp))
        write_json(path.with_suffix(".json"), {"method": "shared", "FeatureSpace": self.model.feature_space,
                                               "seed": self.seed, "imagery": self.imagery, "own_decoder": own_meta,
                                               "info": self.info})
        return path

    def load_own(self, arrays: dict, meta: dict | None) -> None:
        """Restore the own-data decoder of ``imagery="ensemble"`` from ``save``'s arrays (``own.`` prefix);
        files without one (written before, or ``imagery="map"``) decode imagery with the map alone."""
        from .decoder import BrainDecoder

        if meta is None or "own.coef" not in arrays:  # the participant was fitted without one
            self.own, self.imagery = None, "map"
            return
        own = BrainDecoder("ridge", alphas=meta["alphas"], top_k=meta["top_k"], seed=self.seed, device=self.device,
                           penalty=meta.get("penalty", "error"))
        part = {k[len("own."):]: v for k, v in arrays.items() if k.startswith("own.")}
        own.scaler = VoxelScaler.from_arrays(part)
        own.coef, own.intercept, own.alpha = part["coef"], part["intercept"], part["alpha"]
        own.feature_mean, own.feature_sd = part["feature_mean"], part["feature_sd"]
        self.own, self.imagery = own, "ensemble"


def ensemble_patterns(shared: np.ndarray, own: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The mean of two decoders' patterns (rows), each made of unit norm about ``centre`` first (the two
    decoders shrink differently; the metrics and the later rescaling are per pattern and per feature), then
    given the mean of the two norms."""
    a = np.asarray(shared, np.float64) - centre
    b = np.asarray(own, np.float64) - centre
    na = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    nb = np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return (centre + (a / na + b / nb) / 2 * (na + nb) / 2).astype(np.float32)


def fit_new_participant(model: SharedModel, betas: np.ndarray, features: np.ndarray, stimuli=None, *,
                        fine_tune_head: bool = False, **kwargs) -> SharedParticipantDecoder:
    """Fit only this participant's map (optionally the head too); it need not be one of the group."""
    return SharedParticipantDecoder(model, fine_tune_head=fine_tune_head, **kwargs).fit(betas, features, stimuli)


def participant_decoder(shared_files, space: str, **kwargs) -> SharedParticipantDecoder:
    """The unfitted decoder the participant level uses instead of a fresh ``BrainDecoder``: the participant's
    map on the shared model (among ``shared_files``) that decodes ``space``."""
    for path in shared_files:
        model = SharedModel.load(path)
        if model.feature_space == space:
            return SharedParticipantDecoder(model, source=str(path), **kwargs)
    raise UsageError(f"no --shared-decoder decodes '{space}' features",
                     hint=f"pass the desc-shared{space}_model.safetensors of the group level")
