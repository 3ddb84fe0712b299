"""``vector`` writes τ exactly; a vector folder stands in for its fine-tune everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelens import api
from tunelens.checkpoints.index import open_checkpoint
from tunelens.errors import TunelensError
from tunelens.testing import read_state


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "llama_tied"])
def test_vector_is_tau(family: str, tiny, tuned, tmp_path: Path) -> None:
    base = tiny(family)
    ft = tuned(base, scale=0.05)
    out = api.vector(base, ft, tmp_path / "vec", options=api.ReadOptions(quiet=True))
    tau = read_state(out)
    b, f = read_state(base), read_state(ft)
    ck = open_checkpoint(base)
    expected = {k for k in b if not (ck.arch.tie_word_embeddings and "lm_head" in k)}
    assert set(tau) == expected
    for k in expected:
        assert torch.equal(tau[k], f[k].float() - b[k].float()), k
    meta = json.loads((out / "tunelens.json").read_text())
    assert meta["kind"] == "tuning_vector" and meta["dtype"] == "float32"
    assert meta["parent"]["sha256"] == ck.fingerprint
    assert meta["child"]["sha256"] == open_checkpoint(ft).fingerprint


def test_vector_folder_replaces_tuned_in_diff(tiny, tuned, tmp_path: Path) -> None:
    base = tiny("qwen3")
    fts = [tuned(base, seed=11), tuned(base, seed=12)]
    vec = api.vector(base, fts[0], tmp_path / "vec", options=api.ReadOptions(quiet=True))
    direct = api.diff(base, fts, options=api.ReadOptions(quiet=True)).summary
    via = api.diff(base, [vec, fts[1]], options=api.ReadOptions(quiet=True)).summary
    assert via["models"][0]["global"] == direct["models"][0]["global"]
    assert via["vector_cosine"]["matrix"] == direct["vector_cosine"]["matrix"]


def test_vector_against_wrong_base_warns(tiny, tuned, tmp_path: Path) -> None:
    base = tiny("llama")
    vec = api.vector(base, tuned(base), tmp_path / "vec", options=api.ReadOptions(quiet=True))
    other = tiny("llama", seed=5)
    with pytest.warns(UserWarning, match="tuning vector of"):
        api.diff(other, [vec], options=api.ReadOptions(quiet=True))


def test_vector_bf16_and_sharded(tiny, tuned, tmp_path: Path) -> None:
    from tunelens.vectors.write import write_vector

    base = tiny("llama")
    ft = tuned(base)
    out = write_vector(
        open_checkpoint(base), open_checkpoint(ft), tmp_path / "v", dtype="bfloat16", max_shard_bytes=20_000
    )
    assert (out / "model.safetensors.index.json").exists()
    tau = read_state(out)
    b, f = read_state(base), read_state(ft)
    for k, v in tau.items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(v, (f[k].float() - b[k].float()).bfloat16())


def test_vector_refuses_existing_output(tiny, tuned, tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    with pytest.raises(TunelensError, match="already exists"):
        api.vector(tiny("llama"), tuned(tiny("llama")), tmp_path / "v")
