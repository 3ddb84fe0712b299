"""PEFT LoRA adapters read as the low-rank τ they are: every command on an adapter equals the same command
on PEFT's own ``merge_and_unload`` of it (float32 tolerance), for each adapter variant."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from tunelens import api
from tunelens.arithmetic.spec import build_recipe, parse_vector_spec
from tunelens.checkpoints.index import open_checkpoint
from tunelens.cli import cli
from tunelens.testing import make_lora, merge_lora, read_state

Triple = tuple[Path, Path, Path]  # base, adapter, PEFT-merged folder

# name → (family, LoraConfig fields)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}),
    "patterns": (
        "llama",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
            "rank_pattern": {"v_proj": 2, "layers.1.self_attn.q_proj": 3},
            "alpha_pattern": {"o_proj": 3, "gate_proj": 16},
        },
    ),
    "rslora": ("qwen2", {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "up_proj"]}),
    "modules_to_save": (
        "llama",
        {"r": 2, "lora_alpha": 4, "target_modules": ["v_proj"], "modules_to_save": ["lm_head", "norm"]},
    ),
    "fused_phi3": ("phi3", {"r": 4, "lora_alpha": 8, "target_modules": ["qkv_proj", "gate_up_proj", "o_proj"]}),
    "gpt2_conv1d": ("gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "embedding": ("llama", {"r": 4, "lora_alpha": 4, "target_modules": ["embed_tokens", "q_proj"]}),
    "lora_only_bias": ("qwen2", {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj", "k_proj"], "bias": "lora_only"}),
}


@pytest.fixture(scope="module")
def pairs(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Triple]:
    """``pairs(variant)`` → (base, adapter, PEFT-merged folder), built once per module."""
    root = tmp_path_factory.mktemp("adapters")
    cache: dict[str, tuple[Path, Path, Path]] = {}

    def build(variant: str) -> tuple[Path, Path, Path]:
        if variant not in cache:
            family, cfg = VARIANTS[variant]
            base = tiny(family)
            adapter = make_lora(base, root / f"{variant}-adapter", **cfg)
            merged = merge_lora(base, adapter, root / f"{variant}-merged")
            cache[variant] = (base, adapter, merged)
        return cache[variant]

    return build


def _close(a: float, b: float, rel: float = 2e-5, abs_: float = 1e-6) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=abs_)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_diff_equals_merged(pairs: Callable[[str], Triple], variant: str) -> None:
    base, adapter, merged = pairs(variant)
    got = api.diff(base, [f"m={adapter}"])
    ref = api.diff(base, [f"m={merged}"])
    ref_rows = {(r["tensor"], r["component"]): r for r in ref.rows}
    assert len(got.rows) == len(ref.rows)
    changed = 0
    for r in got.rows:
        e = ref_rows[(r["tensor"], r["component"])]
        for col in ("relative_change", "delta_norm", "base_norm", "tuned_norm"):
            assert _close(r[col], e[col]), (variant, r["tensor"], col, r[col], e[col])
        # 1 - cos is ~1e-5 here: compare with an absolute tolerance on the rounding of the merged weights
        assert _close(r["one_minus_cosine"], e["one_minus_cosine"], rel=1e-3, abs_=1e-9)
        changed += r["delta_norm"] > 0
    assert changed > 0
    for key in ("global", "without_embeddings"):
        g, e = got.summary["models"][0][key], ref.summary["models"][0][key]
        assert _close(g["relative_change"], e["relative_change"]), (variant, key)


@pytest.mark.parametrize("variant", ["plain", "patterns", "fused_phi3", "gpt2_conv1d", "rslora"])
def test_subspace_equals_merged(pairs: Callable[[str], Triple], variant: str) -> None:
    base, adapter, merged = pairs(variant)
    kw: dict[str, Any] = {"energy": [0.5, 0.9], "use_cache": False, "tau_spectrum": True}
    got = api.subspace(base, [f"m={adapter}"], **kw)
    ref = api.subspace(base, [f"m={merged}"], **kw)
    assert len(got.rows) == len(ref.rows)
    for r, e in zip(got.rows, ref.rows, strict=True):
        assert (r["tensor"], r["component"], r["k"]) == (e["tensor"], e["component"], e["k"])
        for col in ("share_left", "share_right", "share_both", "tau_norm", "tau_top_r_share"):
            assert _close(r[col], e[col], rel=1e-4, abs_=1e-6), (variant, r["tensor"], col, r[col], e[col])
        # the merged model's τ carries float32 rounding noise of rank min(out, in): the entropy rank moves a little
        assert _close(r["tau_effective_rank"], e["tau_effective_rank"], rel=2e-2), (variant, r["tensor"])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("lam", [1.0, -1.0])
def test_apply_equals_merged(pairs: Callable[[str], Triple], variant: str, lam: float, tmp_path: Path) -> None:
    base, adapter, merged = pairs(variant)
    out = tmp_path / "out"
    api.apply(build_recipe(str(base), [parse_vector_spec(f"m={adapter}:{lam}")]), out)
    ref = tmp_path / "ref"
    api.apply(build_recipe(str(base), [parse_vector_spec(f"m={merged}:{lam}")]), ref)
    a, b = read_state(out), read_state(ref)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    if lam == 1.0:  # θ_pre + τ is PEFT's merged model itself
        m = read_state(merged)
        for name in a:
            if name in m:
                torch.testing.assert_close(a[name], m[name], rtol=1e-5, atol=1e-6)


def test_vector_and_lora_round_trip(pairs: Callable[[str], Triple], tiny: Callable[..., Path], tmp_path: Path) -> None:
    """An adapter written as a vector folder equals its merge; ``vector --lora`` of a full-rank LoRA reads back."""
    base, adapter, merged = pairs("plain")
    vec = api.vector(base, f"a={adapter}", tmp_path / "vec")
    ref = api.vector(base, f"m={merged}", tmp_path / "vref")
    va, vb = read_state(vec), read_state(ref)
    for name in va:
        torch.testing.assert_close(va[name], vb[name], rtol=1e-4, atol=1e-6)
    # the folder `vector --lora` writes is a PEFT adapter: read back as one, it is the τ it was cut from
    lora = tmp_path / "lora"
    api.lora(base, f"a={adapter}", lora, rank=4)
    back = api.diff(base, [f"x={lora}"])
    direct = api.diff(base, [f"a={adapter}"])
    assert back.summary["models"][0]["global"]["delta_norm"] == pytest.approx(
        direct.summary["models"][0]["global"]["delta_norm"], rel=1e-5
    )


def test_provenance_records_the_adapter(pairs: Callable[[str], Triple]) -> None:
    base, adapter, _ = pairs("patterns")
    ck = open_checkpoint(adapter)
    assert ck.kind == "adapter"
    d = ck.describe()["adapter"]
    assert d["r"] == 4 and d["rank_pattern"] == {"v_proj": 2, "layers.1.self_attn.q_proj": 3}
    assert d["base_model_name_or_path"] == str(base)
    res = api.diff(base, [f"m={adapter}"])
    assert res.summary["inputs"][1]["adapter"]["lora_alpha"] == 8


def test_adapter_of_another_base_warns(pairs: Callable[[str], Triple], tiny: Callable[..., Path]) -> None:
    _, adapter, _ = pairs("plain")
    other = tiny("llama", seed=5)
    with pytest.warns(UserWarning, match="base_model_name_or_path"):
        api.diff(other, [f"m={adapter}"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "IA3 adapter"),
        ({"r": 3}, "rank 4, adapter_config.json says r = 3"),
    ],
)
def test_unsupported_adapters_are_one_line(
    pairs: Callable[[str], Triple], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    import shutil

    base, adapter, _ = pairs("plain")
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg.update(change)
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(cli, ["diff", str(base), str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_adapter_for_another_architecture_is_one_line(
    pairs: Callable[[str], Triple], tiny: Callable[..., Path], tmp_path: Path
) -> None:
    _, adapter, _ = pairs("fused_phi3")  # targets qkv_proj, which a Llama does not have
    res = CliRunner().invoke(cli, ["diff", str(tiny("llama")), str(adapter), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "does not have" in res.output


def test_in_place_on_the_base_equals_the_merge(pairs: Callable[[str], Triple]) -> None:
    """What evaluate / activations run for an adapter: its base loaded, τ added in place — PEFT's merged model."""
    from transformers import AutoModelForCausalLM

    from tunelens.arithmetic.inmemory import apply_in_place
    from tunelens.checkpoints.adapter import adapter_base

    for variant in ("plain", "fused_phi3", "modules_to_save"):
        _, adapter, merged = pairs(variant)
        ad = open_checkpoint(adapter)
        base = adapter_base(ad)  # found from the adapter's base_model_name_or_path
        model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32)
        apply_in_place(model, base, [(ad, 1.0)])
        ref = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).state_dict()
        for name, t in model.state_dict().items():
            where = f"{variant} {name}"
            torch.testing.assert_close(t, ref[name], rtol=1e-5, atol=1e-6, msg=lambda m, w=where: f"{w}: {m}")
