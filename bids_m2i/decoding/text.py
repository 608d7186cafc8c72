"""The text channel: captions per stimulus, text feature spaces and a caption bank to retrieve from.

Pure imagination (Mind-to-Image's third condition) starts from a text cue: no image exists, but the cue
text does. Decoding betas into a *text* feature space lets the pipeline (a) score imagination in the space
of its cue (retrieval of the cue among the distinct cues, 2-way) and (b) give a generator a prompt: the
caption of a bank that is closest to the decoded text features.

Feature spaces:

``text`` (:class:`TfidfTextSpace`)
    TF-IDF of word unigrams and bigrams, fitted on the *training* captions only (vocabulary and inverse
    document frequencies), rows L2-normalised; needs no weights, so the demo has a text channel. Words
    absent from the training captions are dropped (they cannot be decoded: no training target has them).
``clip-text`` (:class:`ClipTextSpace`)
    open_clip's text tower (un-normalised text embeddings) from ``--models-dir``.

Captions come from ``BIDS_DIR/stimuli/stimuli.tsv``: a ``caption`` column, else ``description`` (the
simulator writes one for every stimulus); rows are keyed by ``stimulus`` (and by ``stim_file`` when that
column exists). Cue texts come from the events (``cue_text``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import BadDataError, InputMissingError

LOGGER = logging.getLogger("m2i.decoding")

NA = "n/a"
CAPTION_COLUMNS = ("caption", "description")
TEXT_SPACES = ("text", "clip-text")
_WORD = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------------------------ captions
def read_captions(stimuli_dir) -> dict[str, str]:
    """``{stimulus or stim_file: caption}`` from ``stimuli/stimuli.tsv`` (empty when there is none)."""
    path = Path(stimuli_dir) / "stimuli.tsv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    column = next((c for c in CAPTION_COLUMNS if c in table.columns), None)
    if column is None:
        return {}
    captions: dict[str, str] = {}
    for key_column in ("stim_file", "stimulus"):
        if key_column not in table:
            continue
        for key, caption in zip(table[key_column], table[column]):
            caption = str(caption).strip()
            if key not in ("", NA) and caption not in ("", NA):
                captions[str(key)] = caption
    return captions


def read_caption_file(path) -> list[str]:
    """Extra bank captions (``--captions FILE``): one per line, blank lines and ``#`` comments skipped.

    UTF-8 (a BOM dropped) or UTF-16 (Notepad's "Unicode", Excel's "Unicode Text"), else Windows-1252/Latin-1
    with a warning; a binary file, e.g. a .docx or an image given by mistake, is 65 "not a text file". Read at
    start-up too (cli/runner.py), so a bad file stops the run before preprocessing, not at the decoding stage
    hours later.
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"--captions file not found: {path}", path=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadDataError(f"Cannot read the --captions file {path}: {exc.strerror}", path=path,
                           hint="make it readable for this user") from exc
    text = None
    head = raw[:400]
    bom = head[:2] in (b"\xff\xfe", b"\xfe\xff")
    odd_nuls, even_nuls = head[1::2].count(0), head[0::2].count(0)
    if bom or max(odd_nuls, even_nuls) > 0.8 * (len(head) // 2):  # UTF-16 without a BOM: every other byte 0
        encoding = "utf-16" if bom else ("utf-16-le" if odd_nuls >= even_nuls else "utf-16-be")
        try:
            text = raw.decode(encoding).lstrip("\ufeff")
        except UnicodeDecodeError:
            text = None
    if text is None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = None
    if text is None and b"\x00" not in raw and not _looks_binary(raw):
        # "ANSI" text (Windows-1252: Notepad before 2019, Excel's "Text (Tab delimited)"; or Latin-1): a
        # caption with an accent was 65 "not a text file". Events files in it are read too (bids/events.py)
        for legacy in ("cp1252", "latin-1"):
            try:
                text = raw.decode(legacy)
            except UnicodeDecodeError:
                continue
            LOGGER.warning("The --captions file %s is not UTF-8; read as %s", path, legacy)
            break
    if text is None or "\x00" in text:
        raise BadDataError(f"The --captions file {path.name} is not a text file (neither UTF-8 nor UTF-16)",
                           path=path, hint="give a plain text file (UTF-8) with one caption per line, e.g. saved "
                           "from a text editor, not a word-processor document")
    captions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not captions:
        LOGGER.warning("The --captions file %s holds no caption (only blank or # lines): the caption bank keeps "
                       "the training captions and cue texts", path)
    return captions


def _looks_binary(raw: bytes) -> bool:
    """More than 1 % control bytes (other than tab, line ends, form feed) in the first 4 kB: not text in any
    one-byte encoding (images, archives and documents are mostly such bytes; text has none)."""
    head = raw[:4096]
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13)) + head.count(127)
    return controls > 0.01 * max(len(head), 1)


def caption_of(row, captions: dict[str, str]) -> str:
    """The caption of a trials-table row: by ``stim_file``, then by ``stimulus``; ``n/a`` when none."""
    for key in (str(row.get("stim_file", NA)), str(row.get("stimulus", NA))):
        if key not in ("", NA) and key in captions:
            return captions[key]
    return NA


# ------------------------------------------------------------------------------------------- TF-IDF space
def tokens(text: str) -> list[str]:
    """Lower-case words and the bigrams of consecutive words ("red circle" -> red, circle, red_circle)."""
    words = _WORD.findall(str(text).lower())
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


class TfidfTextSpace:
    """Weight-free text features: smoothed TF-IDF (``idf = ln((1 + n) / (1 + df)) + 1``), sublinear term
    frequency (``1 + ln tf``), L2-normalised rows, vocabulary = terms of >= ``min_df`` training captions."""

    space = "text"
    is_tiny = False

    def __init__(self, vocabulary: Sequence[str] = (), idf: np.ndarray | None = None):
        self.vocabulary = list(vocabulary)
        self.index = {term: i for i, term in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf if idf is not None else np.ones(len(self.vocabulary)), dtype=np.float32)

    @classmethod
    def fit(cls, texts: Iterable[str], min_df: int = 1) -> "TfidfTextSpace":
        documents = [set(tokens(t)) for t in texts if str(t) not in ("", NA)]
        if not documents:
            raise BadDataError("no captions to fit the text feature space on",
                               hint="add a caption (or description) column to stimuli/stimuli.tsv")
        df = Counter(term for doc in documents for term in doc)
        vocabulary = sorted(term for term, count in df.items() if count >= min_df)
        n = len(documents)
        idf = np.array([np.log((1 + n) / (1 + df[t])) + 1.0 for t in vocabulary], dtype=np.float32)
        return cls(vocabulary, idf)

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def fingerprint(self) -> str:
        blob = json.dumps({"vocabulary": self.vocabulary, "idf": np.round(self.idf, 6).tolist()})
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            counts = Counter(t for t in tokens(text) if t in self.index)
            for term, count in counts.items():
                out[row, self.index[term]] = (1.0 + np.log(count)) * self.idf[self.index[term]]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)

    def to_json(self) -> dict:
        return {"vocabulary": self.vocabulary, "idf": [float(v) for v in self.idf]}

    @classmethod
    def from_json(cls, data: dict) -> "TfidfTextSpace":
        return cls(data["vocabulary"], np.asarray(data["idf"], dtype=np.float32))


class ClipTextSpace:
    """``clip-text``: open_clip text embeddings (un-normalised) of a loaded :class:`ClipExtractor`."""

    space = "clip-text"

    def __init__(self, clip_extractor):
        self.clip = clip_extractor

    @property
    def dim(self) -> int:
        return self.clip.dim

    @property
    def is_tiny(self) -> bool:
        return self.clip.is_tiny

    def fingerprint(self) -> str:
        return "text-" + self.clip.fingerprint()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_texts(list(texts))


# --------------------------------------------------------------------------------------------- the bank
class CaptionBank:
    """Distinct captions to retrieve from, each with where it came from (``training``, ``cue``, ``file``)."""

    def __init__(self, captions: Sequence[str], sources: Sequence[str]):
        seen: dict[str, str] = {}
        for caption, source in zip(captions, sources):
            caption = str(caption).strip()
            if caption and caption != NA and caption not in seen:
                seen[caption] = source
        if not seen:
            raise BadDataError("the caption bank is empty", hint="stimuli/stimuli.tsv captions, cue texts or "
                               "--captions FILE are needed for caption retrieval")
        self.captions = list(seen)
        self.sources = list(seen.values())
        self._features: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.captions)

    def features(self, space) -> np.ndarray:
        key = f"{space.space}-{space.fingerprint()}"
        if key not in self._features:
            self._features[key] = space.encode_texts(self.captions)
        return self._features[key]

    def retrieve(self, decoded: np.ndarray, space, centre: np.ndarray | None = None) -> np.ndarray:
        """Index of the bank caption closest (cosine) to each decoded row.

        ``centre`` (the training targets' mean) is subtracted from both sides first: the words every caption
        shares would otherwise dominate the cosine.
        """
        from ..evaluation.retrieval import similarity_matrix

        decoded = np.asarray(decoded, dtype=np.float32)
        bank = self.features(space)
        if centre is not None:
            decoded, bank = decoded - centre, bank - centre
        return similarity_matrix(decoded, bank, "cosine").argmax(axis=1)
