"""The text channel: captions, the weight-free TF-IDF space, the caption bank, decoding betas into text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant
from bids_m2i.decoding.text import CaptionBank, TfidfTextSpace, read_caption_file, read_captions, tokens
from bids_m2i.errors import InputMissingError

COLOURS = ("red", "green", "blue")
QUADRANTS = ("topleft", "topright", "bottomleft", "bottomright")


def test_tokens_and_tfidf_fitted_on_training_captions_only():
    assert tokens("A red Circle.") == ["a", "red", "circle", "a_red", "red_circle"]
    space = TfidfTextSpace.fit(["a red circle", "a blue square", "a red square"])
    assert "purple" not in space.vocabulary and "red_circle" in space.vocabulary
    feats = space.encode_texts(["a red circle", "a purple star", ""])
    np.testing.assert_allclose(np.linalg.norm(feats[0]), 1.0, rtol=1e-6)
    assert not feats[2].any()  # no known word: a zero row, not NaN
    # "a" is in every caption: lowest idf, so it weighs least
    idf = dict(zip(space.vocabulary, space.idf))
    assert idf["a"] < idf["red"] < idf["circle"]
    assert TfidfTextSpace.from_json(space.to_json()).fingerprint() == space.fingerprint()


def test_read_captions_prefers_caption_column(tmp_path):
    pd.DataFrame({"stimulus": ["s1", "s2"], "stim_file": ["a.png", "b.png"], "caption": ["one", "n/a"],
                  "description": ["x", "y"]}).to_csv(tmp_path / "stimuli.tsv", sep="\t", index=False)
    assert read_captions(tmp_path) == {"a.png": "one", "s1": "one"}
    assert read_captions(tmp_path / "missing") == {}
    (tmp_path / "bank.txt").write_text("# comment\nfirst caption\n\n second \n")
    assert read_caption_file(tmp_path / "bank.txt") == ["first caption", "second"]
    with pytest.raises(InputMissingError):
        read_caption_file(tmp_path / "nope.txt")


def test_caption_bank_retrieves_nearest_distinct_caption():
    space = TfidfTextSpace.fit(["a red circle", "a blue square", "a green star"])
    bank = CaptionBank(["a red circle", "a blue square", "a red circle", "a green star"], ["training"] * 3 + ["cue"])
    assert len(bank) == 3 and bank.sources == ["training", "training", "cue"]
    decoded = space.encode_texts(["green star", "blue"])
    assert [bank.captions[i] for i in bank.retrieve(decoded, space)] == ["a green star", "a blue square"]


def _caption(code: np.ndarray) -> str:
    """The dominant colour of each quadrant of a 4 x 4 x 3 code, in words."""
    parts = []
    for q, name in enumerate(QUADRANTS):
        block = code[(q // 2) * 2:(q // 2) * 2 + 2, (q % 2) * 2:(q % 2) * 2 + 2].reshape(-1, 3).mean(0)
        parts.append(f"{COLOURS[int(block.argmax())]} {name}")
    return ", ".join(parts)


def _dataset_with_text(tmp_path, seed=0):
    """60 seen images with captions (50 training x2, 10 test x3) and 12 novel ones imagined from their caption."""
    rng = np.random.default_rng(seed)
    stim_dir = tmp_path / "stimuli"
    stim_dir.mkdir()
    codes = rng.random((72, 4, 4, 3)) ** 2  # squared: one colour tends to dominate each quadrant
    captions = [_caption(c) for c in codes]
    for i, code in enumerate(codes[:60]):
        Image.fromarray((code * 255).astype(np.uint8)).resize((32, 32), Image.NEAREST).save(stim_dir / f"im{i:02d}.png")
    pd.DataFrame({"stimulus": [f"im{i:02d}" for i in range(60)], "description": captions[:60]}).to_csv(
        stim_dir / "stimuli.tsv", sep="\t", index=False)
    n_vox = 300
    mixing = rng.standard_normal((48, n_vox))
    rows, betas = [], []

    def add(stim, condition, cue, gain=1.0):
        betas.append(gain * (codes[stim].ravel() - 0.3) @ mixing + rng.standard_normal(n_vox) * 0.5)
        seen = stim < 60
        rows.append({"condition": condition, "cue": cue, "stimulus": f"im{stim:02d}" if seen else f"nov{stim:02d}",
                     "stim_file": f"im{stim:02d}.png" if seen else "n/a",
                     "cue_text": captions[stim] if cue == "text" else "n/a", "category": "n/a"})

    for repeat in range(3):
        for stim in range(60):
            if stim < 50 and repeat == 2:
                continue
            add(stim, "perception", "none")
    for _ in range(2):
        for stim in range(60, 72):
            add(stim, "imagery", "text", gain=0.8)
    return np.asarray(betas, dtype=np.float32), pd.DataFrame(rows), stim_dir, captions


def test_betas_decoded_into_text_retrieve_the_imagined_cue(tmp_path):
    betas, trials, stim_dir, captions = _dataset_with_text(tmp_path)
    (tmp_path / "extra.txt").write_text("an extra caption nobody imagined\n")
    result = reconstruct_participant(betas, trials, stim_dir, DecodingOptions(
        targets=("pixels", "text"), work_dir=tmp_path / "work", captions_file=tmp_path / "extra.txt", n_perm=1000))
    metrics = result.metrics
    text = metrics[(metrics.cue == "text") & (metrics.feature_space == "text")].set_index("metric")
    # cue retrieval among the distinct cue texts (two of the 12 novel images share a caption), 2-way in text space
    n_cues = trials.loc[trials.cue == "text", "cue_text"].nunique()
    assert text.loc["image_top1", "n_candidates"] == n_cues == 11
    assert text.loc["image_top1", "value"] >= 3 * text.loc["image_top1", "chance"]
    # 12 cues of one small synthetic dataset: 4 of 11 retrieved here, p 0.015-0.02 (1,000 permutations). Imagery
    # was scaled per dimension before issue 14's eleventh pass and retrieved 5 (p 0.005) on this dataset; over
    # five dataset seeds both rules retrieve 0.417 on average. Issue 14's goal (p < .01) is checked on the demo
    # simulator, where one factor raised cue retrieval (docs/decoding.md, "Imagery scaled by one factor")
    assert text.loc["image_top1", "p_value"] < 0.05
    assert text.loc["twoway", "value"] > 0.8 and text.loc["twoway", "chance"] == 0.5
    # perception is scored in text space too (captions of the seen images)
    assert ((metrics.condition == "perception") & (metrics.feature_space == "text")).any()
    # every item gets a retrieved caption with its source; imagined items mostly get their own cue
    table = result.predictions
    assert (table["caption"] != "n/a").all()
    assert set(table["caption_source"]) <= {"training", "cue", "file"}
    imagined = table[table.cue == "text"]
    # the retrieved captions resemble the imagined cues (TF-IDF cosine over the bank's vocabulary) more than the
    # bank's captions do on average. On five dataset seeds: 0.58-0.73 against 0.46-0.48 (exact matches of the cue:
    # 0-4 of 12, too few to test on one seed)
    bank = captions[:50] + list(imagined["cue_text"].unique()) + ["an extra caption nobody imagined"]
    space = TfidfTextSpace.fit(bank)

    def unit(texts):
        vectors = space.encode_texts(list(texts))
        return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)

    retrieved_like_cue = (unit(imagined["caption"]) * unit(imagined["cue_text"])).sum(1).mean()
    bank_like_cue = (unit(imagined["cue_text"]) @ unit(bank).T).mean()
    assert retrieved_like_cue > bank_like_cue + 0.08
    # brain correlation is reported per condition, above its shuffled-pairing chance for perception
    brain = metrics[(metrics.metric == "brain_corr") & (metrics.condition == "perception")].iloc[0]
    assert brain.value > brain.chance and brain.p_value < 0.05


def test_text_target_needs_captions(tmp_path):
    betas, trials, stim_dir, _ = _dataset_with_text(tmp_path)
    (stim_dir / "stimuli.tsv").unlink()
    with pytest.raises(InputMissingError, match="caption"):
        reconstruct_participant(betas, trials, stim_dir, DecodingOptions(targets=("pixels", "text"), n_perm=0))
