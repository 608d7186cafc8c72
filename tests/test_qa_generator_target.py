"""``--target clip`` alone (a natural first try) with the default ``--generator pixels``.

The run preprocessed every run and estimated the betas, then stopped at the decoding stage with 65 (a "data"
error) "--generator pixels needs --target pixels". It is a usage error, known from the command line: now 64
before any step (after the inputs and models checks), saying which options to use.
"""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


@pytest.mark.parametrize("targets", [["clip"], ["text"], ["clip", "text"]])
def test_pixels_generator_without_pixels_target_is_64_before_any_step(tiny_dataset, tmp_path, capsys, started,
                                                                     monkeypatch, targets):
    import bids_m2i.bids.inputs as inputs

    monkeypatch.setattr(inputs, "check_models_early", lambda config: None)  # models: other tests
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--target", *targets])
    err = capsys.readouterr().err
    assert code == 64, err
    assert "--generator pixels" in err and "--target pixels" in err and started == []


def test_without_decoding_the_generator_does_not_matter(tmp_path, started):
    bids = make_minimal_bids(tmp_path / "bids", n_volumes=12)
    assert run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--target", "clip", "--stop-after", "preproc"]) == 0
    assert started == [True]
