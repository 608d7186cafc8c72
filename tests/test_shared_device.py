"""The group level's ``--device``: ``auto`` means a CUDA GPU when torch sees one, as at the participant level."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.mark.parametrize("device, gpu, expected", [("auto", False, "cpu"), ("auto", True, "cuda"),
                                                   ("cpu", True, "cpu"), ("cuda", True, "cuda")])
def test_group_engines_follow_the_device_option(monkeypatch, device, gpu, expected):
    """``auto`` was mapped to the CPU at the group level, so a GPU job trained the shared model on its CPU."""
    import torch

    from bids_m2i.workflows.shared import _engine_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert _engine_device(SimpleNamespace(device=device)) == expected


def test_group_cuda_without_a_gpu_is_a_usage_error(monkeypatch):
    import torch

    from bids_m2i.errors import UsageError
    from bids_m2i.workflows.shared import _engine_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as raised:
        _engine_device(SimpleNamespace(device="cuda"))
    assert raised.value.exit_code == 64
