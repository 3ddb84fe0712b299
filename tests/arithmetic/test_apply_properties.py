"""Properties of ``apply`` on tiny models of every family, against naive in-memory state dicts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.checkpoints.index import open_checkpoint
from tunelens.config import Selection
from tunelens.testing import FAMILIES, read_state
from tunelens.vectors.write import write_vector


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a.view(torch.uint8) == b.view(torch.uint8)).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_lambda_is_the_base_bit_for_bit(family: str, tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny(family)
    out, result = run_apply(base, [f"{tuned(base)}:0"])
    ref = read_state(base)
    assert set(out) == set(ref)
    assert all(_bits_equal(out[k], ref[k]) for k in ref)
    assert result.metadata["tensors"]["edited"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_base_plus_tau_is_the_finetune(
    family: str, tiny: Any, tuned: Any, run_apply: Any, ulp_close: Callable[..., bool]
) -> None:
    base = tiny(family)
    ft = tuned(base)
    out, _ = run_apply(base, [str(ft)])
    b, f = read_state(base), read_state(ft)
    assert set(out) == set(b)
    changed = 0
    for k in b:
        assert ulp_close(out[k], f[k], b[k], ulps=1.0), k
        changed += not torch.equal(out[k], b[k])
    assert changed == len(b)  # every float tensor of the tuned fixture moved


def test_bf16_base_plus_tau_is_exact(bf16_pair: tuple[Path, Path], run_apply: Any, tmp_path: Path) -> None:
    base, ft = bf16_pair
    out, _ = run_apply(base, [str(ft)])
    f = read_state(ft)
    assert all(_bits_equal(out[k], f[k]) for k in f)
    # the same through a float32 vector folder (mixed stored dtypes: bf16 target, F32 τ)
    vec = write_vector(open_checkpoint(base), open_checkpoint(ft), tmp_path / "vec")
    assert {t.dtype for t in read_state(vec).values()} == {torch.float32}
    out2, _ = run_apply(base, [str(vec)])
    assert all(_bits_equal(out2[k], f[k]) for k in f)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "qwen2"])
def test_negate_then_add_returns_the_input(
    family: str, tiny: Any, tuned: Any, run_apply: Any, tmp_path: Path, ulp_close: Callable[..., bool]
) -> None:
    base = tiny(family)
    vec = write_vector(open_checkpoint(base), open_checkpoint(tuned(base)), tmp_path / "vec")
    neg, r1 = run_apply(base, [f"{vec}:-1"])
    back, _ = run_apply(r1.out, [f"{vec}:1"])
    b, t = read_state(base), read_state(vec)
    for k in b:
        assert not torch.equal(neg[k], b[k])
        assert ulp_close(neg[k], b[k] - t[k], b[k], t[k], ulps=1.0), k
        assert ulp_close(back[k], b[k], neg[k], t[k], ulps=2.0), k


def test_target_ft_minus_tau_is_the_base(bf16_pair: tuple[Path, Path], run_apply: Any) -> None:
    base, ft = bf16_pair
    out, result = run_apply(base, [f"{ft}:-1"], target="ft")
    b = read_state(base)
    assert all(_bits_equal(out[k], b[k]) for k in b)
    assert result.metadata["target"]["path"] == str(ft)
    # the task-arithmetic reading θ_pre − τ differs from the base
    out2, _ = run_apply(base, [f"{ft}:-1"], target="pre")
    f = read_state(ft)
    k = "model.layers.0.mlp.up_proj.weight"
    expected = (2 * b[k].float() - f[k].float()).to(torch.bfloat16)
    assert _bits_equal(out2[k], expected)


MASKS: list[tuple[str, dict[str, Any], Callable[[str], bool]]] = [
    ("mlp", {"components": ("gate", "up", "down")}, lambda n: ".mlp." in n),
    ("attention", {"components": ("q", "k", "v", "o")}, lambda n: ".self_attn." in n and "norm" not in n),
    (
        "gate,up layer 1",
        {"components": ("gate", "up"), "layers": (1,)},
        lambda n: n.startswith("model.layers.1.mlp.") and ("gate" in n or "up_proj" in n),
    ),  # fmt: skip
    ("no embeddings", {"embeddings": False}, lambda n: "embed_tokens" not in n and "lm_head" not in n),
]


@pytest.mark.parametrize(("label", "mask", "touched"), MASKS, ids=[m[0] for m in MASKS])
def test_masks_touch_exactly_the_named_tensors(
    label: str, mask: dict[str, Any], touched: Callable[[str], bool], tiny: Any, tuned: Any, run_apply: Any
) -> None:
    base = tiny("llama")
    ft = tuned(base)
    out, result = run_apply(base, [f"{ft}:-1"], selection=Selection(**mask))
    b, f = read_state(base), read_state(ft)
    for k in b:
        if touched(k):
            assert torch.allclose(out[k], 2 * b[k] - f[k], atol=1e-6), k
        else:
            assert _bits_equal(out[k], b[k]), k
    assert result.metadata["tensors"]["edited"] == sum(map(touched, b))


def test_phi3_fused_parts_written_back_fused(tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny("phi3")
    ft = tuned(base)
    out, _ = run_apply(base, [f"{ft}:-0.5"], selection=Selection(components=("k", "up")))
    b, f = read_state(base), read_state(ft)
    q = 4 * 8  # heads * head_dim
    kv = 2 * 8
    ffn = 64
    for layer in range(3):
        name = f"model.layers.{layer}.self_attn.qkv_proj.weight"
        assert name in out and out[name].shape == b[name].shape
        expect = b[name].clone()
        expect[q : q + kv] = b[name][q : q + kv] - 0.5 * (f[name][q : q + kv] - b[name][q : q + kv])
        assert _bits_equal(out[name][:q], b[name][:q]) and _bits_equal(out[name][q + kv :], b[name][q + kv :])
        assert torch.allclose(out[name], expect, atol=1e-6)
        gu = f"model.layers.{layer}.mlp.gate_up_proj.weight"
        assert _bits_equal(out[gu][:ffn], b[gu][:ffn])
        assert torch.allclose(out[gu][ffn:], b[gu][ffn:] - 0.5 * (f[gu][ffn:] - b[gu][ffn:]), atol=1e-6)


def test_component_scale_and_mean(tiny: Any, tuned: Any, run_apply: Any, ulp_close: Callable[..., bool]) -> None:
    base = tiny("qwen2")
    ft1, ft2 = tuned(base, seed=1), tuned(base, seed=2)
    out, result = run_apply(base, [f"a={ft1}", f"b={ft2}:3"], mean=True, scales=(("up", 0.5), ("q", 0.0)))
    b, f1, f2 = read_state(base), read_state(ft1), read_state(ft2)
    for k in b:
        lam1, lam2 = 0.5, 1.5
        if ".up_proj." in k:
            lam1, lam2 = lam1 * 0.5, lam2 * 0.5
        if ".q_proj." in k:  # weight and bias
            assert _bits_equal(out[k], b[k]), k
            continue
        naive = b[k].double() + lam1 * (f1[k].double() - b[k].double()) + lam2 * (f2[k].double() - b[k].double())
        assert ulp_close(out[k], naive.float(), b[k], f1[k], f2[k], ulps=3.0), k
    assert [t["scale"] for t in result.metadata["recipe"]["terms"]] == [0.5, 1.5]
    assert result.metadata["recipe"]["mean"] is True


def test_sharded_output_with_index_and_metadata(tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny("llama", sharded=True)
    ft = tuned(base)
    out, result = run_apply(base, [f"med={ft}:-1"], shard_bytes=30_000, dtype="bfloat16")
    folder = result.out
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(out)
    assert all(t.dtype == torch.bfloat16 for t in out.values())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "tunelens.json").read_text())
    assert meta["recipe"]["terms"][0] == {
        "name": "med", "path": str(ft), "scale": -1.0,
        "mask": {"components": "all", "layers": "all", "embeddings": True}, "component_scales": {},
    }  # fmt: skip
    assert meta["base"]["sha256"] == open_checkpoint(base).fingerprint
    assert meta["vectors"][0]["sha256"] == open_checkpoint(ft).fingerprint
    assert meta["compute_dtype"] == "float32" and meta["output_dtype"] == "bfloat16"
    assert "apply" in meta["definitions"] and meta["peak_rss_bytes"] > 0
    assert "base_model: " in (folder / "README.md").read_text()
    assert open_checkpoint(folder).kind == "model"


@pytest.mark.parametrize("family", ["llama_tied", "gpt2"])
def test_tied_weights_stay_tied(family: str, tiny: Any, tuned: Any, run_apply: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    base = tiny(family)
    out, result = run_apply(base, [f"{tuned(base)}:-1"])
    assert set(out) == set(read_state(base))  # the base stores embed only: so does the output
    # a tied base that stores lm_head too: both written with the same (edited) values
    import shutil

    stored = tmp_path / "tied-stored"
    shutil.copytree(base, stored)
    state = load_file(str(stored / "model.safetensors"))
    embed = next(k for k in state if "embed_tokens" in k or "wte" in k)
    state["lm_head.weight"] = state[embed].clone()
    save_file(state, str(stored / "model.safetensors"), metadata={"format": "pt"})
    out2, result2 = run_apply(stored, [f"{tuned(base)}:-1"])
    assert torch.equal(out2["lm_head.weight"], out2[embed]) and not torch.equal(out2[embed], state[embed])
    assert result2.metadata["tensors"]["tied"] == {"lm_head.weight": embed}


def test_vocab_crop_keeps_the_base_shape(tiny: Any, run_apply: Any, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from tunelens.config import ReadOptions
    from tunelens.testing import write_config

    base = tiny("llama")
    ft = tmp_path / "ft-resized"
    shutil.copytree(base, ft)
    state = load_file(str(ft / "model.safetensors"))
    torch.manual_seed(0)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        state[k] = torch.cat([state[k] + 0.01, torch.randn(8, state[k].shape[1])])
    save_file(state, str(ft / "model.safetensors"), metadata={"format": "pt"})
    write_config(ft, vocab_size=328)
    out, result = run_apply(base, [f"{ft}:-1"], options=ReadOptions(vocab="crop", quiet=True))
    b = read_state(base)
    assert out["lm_head.weight"].shape == b["lm_head.weight"].shape
    assert torch.allclose(out["lm_head.weight"], b["lm_head.weight"] - 0.01, atol=1e-6)
    cropped = result.metadata["alignment"]["cropped"]
    assert {c["tensor"] for c in cropped} == {"model.embed_tokens.weight", "lm_head.weight"}


def test_untied_finetune_of_a_tied_base_as_target(tiny: Any, tuned: Any, run_apply: Any, tmp_path: Path) -> None:
    """--target ft where the base ties lm_head but the fine-tune stores its own: lm_head's τ is taken
    against the base's embedding and the fine-tune's lm_head is edited, not replaced by its embedding."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunelens.testing import write_config

    base = tiny("llama_tied")
    ft = tmp_path / "ft-untied"
    shutil.copytree(tuned(base), ft)
    state = load_file(str(ft / "model.safetensors"))
    embed = "model.embed_tokens.weight"
    state["lm_head.weight"] = state[embed] + 0.05 * torch.randn(state[embed].shape, generator=torch.Generator())
    save_file(state, str(ft / "model.safetensors"), metadata={"format": "pt"})
    write_config(ft, tie_word_embeddings=False)
    out, result = run_apply(base, [f"{ft}:0.5"], target="ft")
    b = read_state(base)
    head = state["lm_head.weight"].double()
    want = head + 0.5 * (head - b[embed].double())
    assert torch.allclose(out["lm_head.weight"].double(), want, atol=1e-6)
    want_embed = state[embed].double() + 0.5 * (state[embed].double() - b[embed].double())
    assert torch.allclose(out[embed].double(), want_embed, atol=1e-6)
    assert result.metadata["tensors"]["tied"] == {} and result.metadata["notes"] == []


def test_layers_outside_the_model_are_an_error(tiny: Any, tuned: Any, run_apply: Any) -> None:
    from tunelens.errors import TunelensError

    base = tiny("llama")
    with pytest.raises(TunelensError, match=r"--layers 3,7 not in .* \(layers 0-2\)"):
        run_apply(base, [str(tuned(base))], selection=Selection(layers=(1, 3, 7)))


def test_ties_and_dare_against_naive_definitions(tiny: Any, tuned: Any, run_apply: Any) -> None:
    """Independent of PEFT: TIES as trim / elect / disjoint mean in float64, and DARE's drop-and-rescale
    structure (each element of the update is 0 or λτ/density; about `density` of them kept)."""
    base = tiny("llama")
    fts = [tuned(base, seed=s) for s in (1, 2, 3)]
    lams = [0.8, 0.5, -0.4]
    density = 0.3
    out, _ = run_apply(base, [f"{f}:{lam}" for f, lam in zip(fts, lams, strict=True)], method="ties", density=density)
    b = read_state(base)
    states = [read_state(f) for f in fts]
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        taus = [s[name].double() - b[name].double() for s in states]
        trimmed = []
        for t in taus:
            k = int(density * t.numel())
            keep = torch.zeros(t.numel(), dtype=torch.bool)
            keep[t.abs().flatten().argsort(descending=True)[:k]] = True
            trimmed.append(torch.where(keep.view(t.shape), t, torch.zeros_like(t)))
        elected = torch.where(torch.stack(trimmed).sum(0) >= 0, 1.0, -1.0)  # from the unweighted trimmed τ
        weighted = [lam * t for lam, t in zip(lams, trimmed, strict=True)]
        agree = [t.sign() == elected for t in trimmed]  # τ_i's own sign (a trimmed zero never agrees)
        total = sum(torch.where(a, w, torch.zeros_like(w)) for a, w in zip(agree, weighted, strict=True))
        count = sum(a.double() for a in agree)
        assert isinstance(total, torch.Tensor) and isinstance(count, torch.Tensor)
        want = b[name].double() + total / count.clamp_min(1)
        assert torch.allclose(out[name].double(), want, atol=1e-6), name
    # DARE, one vector: update = λ τ m / density with m ∈ {0, 1}
    out, _ = run_apply(base, [f"{fts[0]}:0.8"], method="dare_linear", density=0.4, seed=3)
    name = "model.layers.2.mlp.down_proj.weight"
    tau = states[0][name].double() - b[name].double()
    ratio = (out[name].double() - b[name].double()) / (0.8 * tau / 0.4)
    kept = (ratio - 1).abs() < 1e-4
    assert bool((kept | (ratio.abs() < 1e-4)).all())
    n = tau.numel()
    assert abs(float(kept.double().mean()) - 0.4) < 4 * (0.4 * 0.6 / n) ** 0.5


def test_worker_count_does_not_change_a_bit(tiny: Any, tuned: Any, run_apply: Any) -> None:
    """Per-worker reused buffers: 1 worker and 4 workers write identical bytes (3 vectors, dtype change)."""
    from tunelens.config import ReadOptions

    base = tiny("llama", sharded=True)
    specs = [f"{tuned(base, seed=s)}:{lam}" for s, lam in ((1, 0.5), (2, -1.0), (3, 0.25))]
    one, _ = run_apply(base, specs, dtype="bfloat16", options=ReadOptions(workers=1, quiet=True))
    four, _ = run_apply(base, specs, dtype="bfloat16", options=ReadOptions(workers=4, quiet=True))
    assert set(one) == set(four) and all(_bits_equal(one[k], four[k]) for k in one)
    b = read_state(base)
    assert all(not torch.equal(one[k], b[k].to(torch.bfloat16)) for k in b)
