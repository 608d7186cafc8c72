"""--glm-noise-model and --hrf-library reach the GLM node; a combination the engine lacks stops at start-up."""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli


def _glm_nodes(tmp_path, values):
    from nipype.pipeline import engine as pe

    from bids_m2i.bids.inputs import collect_inputs
    from bids_m2i.config import build_config
    from bids_m2i.workflows.base import init_m2i_wf
    from helpers import make_minimal_bids

    bids = make_minimal_bids(tmp_path / "bids")
    values = {"stop_after": "glm", "skip_bids_validation": True, **values}
    config = build_config(bids, tmp_path / "out", "participant", values, set(values))
    workflow = init_m2i_wf(config, collect_inputs(config, tmp_path / "work"), tmp_path / "work")
    return [n for n in workflow._create_flat_graph().nodes() if isinstance(n, pe.Node) and n.name == "estimate_betas"]


def test_defaults_and_choices_reach_the_glm_node(tmp_path):
    (node,) = _glm_nodes(tmp_path / "a", {})
    assert (node.inputs.noise_model, node.inputs.hrf_library) == ("auto", "two-width")
    (node,) = _glm_nodes(tmp_path / "b", {"glm_noise_model": "ols", "hrf_library": "narrow"})
    assert (node.inputs.noise_model, node.inputs.hrf_library) == ("ols", "narrow")


@pytest.mark.parametrize("args,code", [
    (["--glm", "lss", "--glm-noise-model", "ar1"], 64),
    (["--hrf-library", "wide"], 64),
    (["--glm-noise-model", "ar2"], 64),
    (["--glm", "lsa", "--fraction-pooling", "1"], 64),        # no ridge stage to act on
])
def test_unsupported_glm_options_are_64_before_any_step(args, code, minimal_bids, tmp_path, capsys):
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", *args]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "sub-01").exists()


def test_fraction_pooling_default_and_given_values_reach_the_glm_node(tmp_path):
    (node,) = _glm_nodes(tmp_path / "a", {})
    assert node.inputs.fraction_pooling == 1.0                   # the default since issue 13's thirteenth pass
    (zero,) = _glm_nodes(tmp_path / "z", {"fraction_pooling": 0.0})
    assert zero.inputs.fraction_pooling == 0.0                   # 0 turns it off: it must reach the engine
    (used,) = _glm_nodes(tmp_path / "b", {"fraction_pooling": 1.5})
    assert used.inputs.fraction_pooling == 1.5
    # the default weight does not stop the methods without a ridge stage (only a weight given for them does)
    (lsa,) = _glm_nodes(tmp_path / "c", {"glm": "lsa"})
    assert lsa.inputs.method == "lsa"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "x"])
def test_fraction_pooling_must_be_a_finite_number_at_least_0(value, minimal_bids, tmp_path, capsys):
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "--fraction-pooling", value]) == 64
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("value,ok", [(0, True), (0.0, True), (2, True), (-0.5, False), (True, False), ("1", False)])
def test_fraction_pooling_in_a_config_file(value, ok, tmp_path):
    from bids_m2i.config import read_config_file
    from bids_m2i.errors import UsageError

    path = tmp_path / "c.toml"
    path.write_text(f"fraction_pooling = {str(value).lower() if isinstance(value, bool) else repr(value)}\n"
                    .replace("'", '"'))
    if ok:
        assert read_config_file(path)["fraction_pooling"] == float(value)
    else:
        with pytest.raises(UsageError, match="fraction_pooling"):
            read_config_file(path)
