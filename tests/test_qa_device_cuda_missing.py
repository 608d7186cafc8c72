"""``--device cuda`` where torch sees no GPU: the message says how to give the run one."""

from __future__ import annotations

import pytest

from bids_m2i.utils import torch_runtime


@pytest.mark.parametrize("visible", [None, "", "-1"])
def test_cuda_without_a_gpu_says_how_to_get_one(monkeypatch, visible):
    """``--device cuda`` where torch sees no GPU (a job that did not ask for one, a container started without
    it, ``CUDA_VISIBLE_DEVICES`` emptied): the hint said only "use --device auto or cpu". It now says how to give
    the run a GPU, and shows ``CUDA_VISIBLE_DEVICES`` when it is set (an empty or -1 value hides every GPU)."""
    import torch

    from bids_m2i.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(UsageError) as raised:
        torch_runtime.resolve_device("cuda")
    said = f"{raised.value.message} {raised.value.hint}"
    assert raised.value.exit_code == 64
    assert "--gpus all" in said and "--nv" in said and "--device cpu" in said
    assert ('CUDA_VISIBLE_DEVICES="' in said) == (visible is not None)
    if visible is not None:
        assert f'CUDA_VISIBLE_DEVICES="{visible}"' in said
