"""Best-of-N candidates (``--candidates N`` with unclip) were written to ``WORK_DIR/candidates/item-<i>_cand-<k>_
seed-<s>.png``: the same names for every participant (the seeds depend on --seed and the item only), so a second
participant (same run or another job on the same -w) overwrote the first's, and the first's image sidecars
(``CandidateFiles``) named another participant's images. Now they go to the generate node's own folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image

from bids_m2i.decoding import reconstruct


def _fake_pipeline_inputs(tmp_path: Path):
    trials = pd.DataFrame({"condition": ["perception"] * 2})
    prepared = SimpleNamespace(trials=trials, pixel_basis=None, tiny=True, targets=("clip",))
    predictions = reconstruct.ItemPredictions(items=[np.array([0]), np.array([1])],
                                              features={"clip": np.ones((2, 4), dtype=np.float32)},
                                              table=pd.DataFrame({"caption": ["a", "b"]}))
    return prepared, predictions


def test_generate_writes_candidates_where_it_is_told(tmp_path, monkeypatch):
    import bids_m2i.decoding.components as components
    import bids_m2i.decoding.generate as generate

    def fake_generate(models_dir, decoded, seeds, **kwargs):
        images = [Image.fromarray(np.full((4, 4, 3), seed % 255, np.uint8)) for seed in seeds]
        return images, [{"Generator": "unclip"} for _ in seeds]

    class Selector:
        def select(self, candidates, decoded):
            return np.zeros(len(candidates), dtype=int), np.ones((len(candidates), len(candidates[0])))

    monkeypatch.setattr(generate, "generate_images", fake_generate)
    monkeypatch.setattr(components.SELECTORS, "create", lambda name, **kw: Selector())
    prepared, predictions = _fake_pipeline_inputs(tmp_path)
    files = {}
    for subject in ("01", "02"):
        options = reconstruct.DecodingOptions(targets=("clip",), generator="unclip", candidates=2, seed=0,
                                              work_dir=tmp_path / "work",
                                              candidates_dir=tmp_path / f"node-{subject}" / "candidates")
        recon = reconstruct.generate_reconstructions(predictions, prepared, options, pipeline=(object(), {}))
        files[subject] = [f for meta in recon.metadata for f in meta["CandidateFiles"]]
    assert all(Path(f).is_file() for fs in files.values() for f in fs)
    assert not set(files["01"]) & set(files["02"])  # each participant keeps its own candidates
    assert not (tmp_path / "work" / "candidates").exists()


def test_the_generate_node_puts_candidates_in_its_own_folder(tmp_path, monkeypatch):
    import bids_m2i.decoding.reconstruct as engine
    import bids_m2i.decoding.stage_files as stage_files
    from bids_m2i.interfaces.decoding import GenerateImages

    seen = {}

    class Stop(Exception):
        pass

    def capture(predictions, prepared, options, **kwargs):
        seen["options"] = options
        raise Stop

    monkeypatch.setattr(engine, "generate_reconstructions", capture)
    monkeypatch.setattr(stage_files, "load_prepared", lambda *a: SimpleNamespace(targets=("pixels",)))
    monkeypatch.setattr(stage_files, "load_predictions", lambda *a: None)
    for name in ("trials.tsv", "targets.npz", "prepared.json", "predictions.npz", "table.tsv"):
        (tmp_path / name).write_text("")
    node_dir = tmp_path / "m2i_wf" / "sub_01_wf" / "decoding_wf" / "decode_generate"
    node_dir.mkdir(parents=True)
    interface = GenerateImages(trials=str(tmp_path / "trials.tsv"), targets=str(tmp_path / "targets.npz"),
                               prepared=str(tmp_path / "prepared.json"), predictions=str(tmp_path / "predictions.npz"),
                               table=str(tmp_path / "table.tsv"), subject="01", output_dir=str(tmp_path / "out"),
                               work_dir=str(tmp_path), shared_decoders=[])
    try:
        interface._run(SimpleNamespace(cwd=str(node_dir)))
    except Stop:
        pass
    assert seen["options"].candidates_dir == node_dir / "candidates"
