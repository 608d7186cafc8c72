"""A work-dir cache that holds the bytes of a published file is hard-linked to it (issue 16: disk)."""

from __future__ import annotations

from bids_m2i.utils.atomic import link_identical_copies


def test_identical_copies_become_links_and_others_stay(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "work" / "decoders"
    out.mkdir()
    cache.mkdir(parents=True)
    model = out / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    (cache / "ridge-a.safetensors").write_bytes(b"weights" * 1000)      # the same fit
    (cache / "ridge-b.safetensors").write_bytes(b"weighty" * 1000)      # same size, other bytes
    (cache / "ridge-a.json").write_bytes(b"weights" * 1000)             # not matched by the pattern
    assert link_identical_copies(model, cache, "*.safetensors") == 1
    assert (cache / "ridge-a.safetensors").stat().st_ino == model.stat().st_ino
    assert (cache / "ridge-a.safetensors").read_bytes() == b"weights" * 1000
    assert (cache / "ridge-b.safetensors").stat().st_ino != model.stat().st_ino
    assert (cache / "ridge-a.json").stat().st_ino != model.stat().st_ino
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    # again: nothing left to link; a missing folder is not an error
    assert link_identical_copies(model, cache, "*.safetensors") == 0
    assert link_identical_copies(model, tmp_path / "nowhere") == 0
