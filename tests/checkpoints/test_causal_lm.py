"""The shared model loader: no second copy of the weights, no upcast, inputs never written, clear errors."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tunelens.checkpoints.causal_lm import load_causal_lm, transformers_output
from tunelens.checkpoints.index import open_checkpoint
from tunelens.errors import TunelensError
from tunelens.testing import FAMILIES, make_tiny


def _mapping_of(ptr: int) -> str:
    """The file a virtual address is mapped from ("" for anonymous memory), from /proc/self/maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5].strip() if len(parts) > 5 else ""
    raise AssertionError(f"address {ptr:#x} is in no mapping")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("llama", tmp_path_factory.mktemp("bf16") / "m", dtype=torch.bfloat16, max_shard_size="20KB")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_bf16_weights_are_mapped_from_the_shards_not_copied(bf16_model: Path) -> None:
    ck = open_checkpoint(bf16_model)
    shards = {str(p.resolve()) for p in ck.files}
    model = load_causal_lm(ck, dtype="bfloat16")
    params = dict(model.named_parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params.values())
    where = {n: _mapping_of(p.data_ptr()) for n, p in params.items()}
    assert len(shards) > 1 and set(where.values()) <= shards, where  # every parameter is a view of a shard
    assert set(where.values()) == shards
    # the check can fail: float32 from bf16 is a converted copy in anonymous memory
    upcast = load_causal_lm(ck, dtype="float32")
    assert all(_mapping_of(p.data_ptr()) not in shards for p in upcast.parameters())


def test_weights_equal_the_stored_tensors_and_eval_mode(bf16_model: Path) -> None:
    from safetensors.torch import load_file

    stored: dict[str, torch.Tensor] = {}
    for shard in sorted(bf16_model.glob("*.safetensors")):
        stored.update(load_file(shard))
    for dtype in ("bfloat16", "float32"):
        model = load_causal_lm(open_checkpoint(bf16_model), dtype=dtype)
        assert not model.training
        state = model.state_dict()
        for name, t in stored.items():
            assert torch.equal(state[name], t.to(getattr(torch, dtype))), (dtype, name)


def test_writing_into_the_loaded_model_never_writes_the_files(bf16_model: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(bf16_model, tmp_path / "m")

    def digest() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}

    before = digest()
    model = load_causal_lm(open_checkpoint(folder), dtype="bfloat16")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # what evaluate --apply does to the resident model
    assert all(bool((p != 0).any()) for p in model.parameters())
    assert digest() == before


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_with_all_its_weights(family: str, tiny: Callable[..., Path]) -> None:
    model = load_causal_lm(open_checkpoint(tiny(family)), dtype="float32")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_missing_weight_is_one_error_not_a_random_init(tiny: Callable[..., Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny("llama"), tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TunelensError, match=r"1 weight\(s\) .*model\.layers\.1\.mlp\.up_proj\.weight.* at random"):
        load_causal_lm(open_checkpoint(folder), dtype="float32")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"dtype": "int8"}, "--dtype must be one of"),
        ({"dtype": "float32", "device": "tpu"}, "--device must be cpu or cuda"),
    ],
)
def test_bad_options_are_one_error(tiny: Callable[..., Path], kw: dict[str, str], message: str) -> None:
    with pytest.raises(TunelensError, match=message):
        load_causal_lm(open_checkpoint(tiny("llama")), **kw)


def test_vector_folder_is_refused(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path) -> None:
    from tunelens import api

    base = tiny("llama")
    api.vector(base, tuned(base), out=tmp_path / "vec")
    with pytest.raises(TunelensError, match="tuning-vector folder"):
        load_causal_lm(open_checkpoint(tmp_path / "vec"), dtype="float32")


def test_transformers_output_switch_is_scoped() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    level = hf_logging.get_verbosity()
    with transformers_output(quiet=True):
        assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == level
    with pytest.raises(RuntimeError), transformers_output(quiet=False):
        assert not hf_logging.is_progress_bar_enabled()  # tests have no TTY: bars off
        assert hf_logging.get_verbosity() == level  # warnings stay without --quiet
        raise RuntimeError
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == level
