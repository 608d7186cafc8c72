"""Shared stimuli rank a new participant's voxels (bids_m2i/decoding/shared_stimuli.py) on planted data.

A planted world where every participant sees the same stimuli: each stimulus has a few latent properties;
features are a fixed linear function of them plus detail no brain encodes; each participant has responsive
voxels (own random tuning, noise) and many silent ones (noise only). The group saw each training stimulus
twice; the new participant saw each once (no repeats, so no ncsnr), as a participant with 2 of 6 runs.
"""

from __future__ import annotations

import numpy as np

from bids_m2i.decoding.shared import ParticipantData, SharedModel, fit_new_participant, train_shared_model
from bids_m2i.decoding.shared_stimuli import group_stimulus_latents, rank_by_group, voxel_scores

N_LATENT, N_FEATURES, N_STIMULI, N_RESPONSIVE, N_SILENT = 4, 30, 80, 40, 400


class World:
    def __init__(self, seed=0):
        rng = self.rng = np.random.default_rng(seed)
        self.latent = rng.normal(size=(N_STIMULI, N_LATENT))
        mixing = rng.normal(size=(N_LATENT, N_FEATURES))
        self.features = (self.latent @ mixing + 0.5 * rng.normal(size=(N_STIMULI, N_FEATURES))).astype(np.float32)
        self.names = np.array([f"img-{i:04d}" for i in range(N_STIMULI)])

    def betas(self, rows, noise=1.0):
        tuning = self.rng.normal(size=(N_LATENT, N_RESPONSIVE))
        signal = self.latent[rows] @ tuning
        responsive = signal + noise * signal.std() * self.rng.normal(size=signal.shape)
        silent = signal.std() * self.rng.normal(size=(len(rows), N_SILENT))
        return np.concatenate([responsive, silent], axis=1).astype(np.float32)  # responsive voxels first

    def group(self, n=3):
        rows = np.repeat(np.arange(N_STIMULI), 2)
        return [ParticipantData(f"{i + 1:02d}", self.betas(rows), self.features[rows], self.names[rows])
                for i in range(n)]


def test_group_response_ranks_the_new_participants_responsive_voxels_first(tmp_path):
    world = World()
    model = train_shared_model(world.group(), "pixels", n_components=8, n_threads=1)
    assert sorted(model.stimulus_names) == sorted(world.names)  # every group training stimulus, no other
    assert model.stimulus_latents.shape == (N_STIMULI, 8)
    path = model.save(tmp_path / "model.safetensors")
    model = SharedModel.load(path)  # kept in the file
    assert len(model.stimulus_names) == N_STIMULI

    rows = np.arange(N_STIMULI)  # each stimulus once
    betas = world.betas(rows)
    names, latents = model.stimulus_names, model.stimulus_latents
    index = {n: i for i, n in enumerate(names)}
    scores = voxel_scores(betas - betas.mean(0), latents[[index[n] for n in world.names]])
    top = np.argsort(-scores)[:N_RESPONSIVE]
    assert np.mean(top < N_RESPONSIVE) > 0.8  # mostly responsive voxels among the best ranked

    decoder = fit_new_participant(model, betas, world.features, world.names, n_threads=1)
    assert decoder.info["voxel_ranking"] == "shared stimuli"
    selection = decoder.info["voxel_selection"]
    assert selection["shared_trials"] == N_STIMULI
    assert decoder.info["n_voxels"] < N_RESPONSIVE + N_SILENT  # the silent majority is dropped
    kept = decoder.map.scaler.columns
    assert np.isin(np.arange(N_RESPONSIVE), kept).mean() > 0.9  # the responsive voxels stay
    assert np.mean(kept < N_RESPONSIVE) > 3 * N_RESPONSIVE / (N_RESPONSIVE + N_SILENT)  # 3x their base rate


def test_without_shared_stimuli_or_with_repeats_the_usual_rule_applies():
    world = World(1)
    model = train_shared_model(world.group(), "pixels", n_components=8, n_threads=1)
    rows = np.arange(N_STIMULI)
    betas = world.betas(rows)
    other_names = np.array([f"novel-{i}" for i in rows])  # none of the group's stimuli
    decoder = fit_new_participant(model, betas, world.features, other_names, n_threads=1)
    assert decoder.info["voxel_ranking"] == "none"  # no repeats, no shared stimuli: every voxel
    assert decoder.info["n_voxels"] == N_RESPONSIVE + N_SILENT
    assert rank_by_group(betas, world.features[:, :8], other_names, model.stimulus_names, model.stimulus_latents,
                         (1.0, 10.0)) is None

    twice = np.repeat(rows, 2)
    decoder = fit_new_participant(model, world.betas(twice), world.features[twice], world.names[twice],
                                  n_threads=1)
    assert decoder.info["voxel_ranking"] == "ncsnr"  # repeats: ranked as the own-data decoder

    model.stimulus_names, model.stimulus_latents = [], None  # a model file of an earlier version
    decoder = fit_new_participant(model, betas, world.features, world.names, n_threads=1)
    assert decoder.info["voxel_ranking"] == "none"


def test_group_stimulus_latents_average_over_participants_that_saw_the_stimulus():
    world = World(2)
    group = world.group(2)
    model = train_shared_model(group, "pixels", n_components=4, n_threads=1)
    names, latents = group_stimulus_latents(model.maps, group)
    first = names.index("img-0003")
    expected = np.mean([model.maps[p.label].latent(p.betas[p.stimuli == "img-0003"]).mean(0) for p in group], 0)
    np.testing.assert_allclose(latents[first], expected, rtol=1e-4, atol=1e-5)
