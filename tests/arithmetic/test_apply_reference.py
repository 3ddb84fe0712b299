"""``apply`` output against independent references: transformers itself, mergekit and PEFT's merges."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.arithmetic.merges import part_seed
from tunelens.checkpoints.index import open_checkpoint
from tunelens.config import Selection
from tunelens.testing import read_state


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3", "gpt2", "llama_tied"])
def test_output_loads_generates_and_matches_a_naive_edit(family: str, tiny: Any, tuned: Any, run_apply: Any) -> None:
    from transformers import AutoTokenizer

    base = tiny(family)
    ft = tuned(base, scale=0.2)
    _, result = run_apply(base, [f"{ft}:-1.5"], selection=Selection(components=("gate", "up", "down", "q")))
    model = _load(result.out)
    # reference: transformers loads base and fine-tune; edit its parameters by hand (components by name)
    ref, ftm = _load(base), _load(ft)
    keys = ("gate_proj", "up_proj", "down_proj", "q_proj", "gate_up_proj", "c_fc", "mlp.c_proj")
    ft_params = dict(ftm.named_parameters())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if any(k in name for k in keys):
                p.sub_(1.5 * (ft_params[name] - p))
            if "qkv_proj" in name:  # phi3: only the q rows
                q = ref.config.hidden_size  # heads * head_dim
                p[:q].sub_(1.5 * (ft_params[name][:q] - p[:q]))
            if "attn.c_attn" in name and name.endswith("weight"):  # gpt2 Conv1D [in, out]: q columns
                h = ref.config.n_embd
                p[:, :h].sub_(1.5 * (ft_params[name][:, :h] - p[:, :h]))
            elif "attn.c_attn" in name:
                h = ref.config.n_embd
                p[:h].sub_(1.5 * (ft_params[name][:h] - p[:h]))
    ids = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])
    with torch.no_grad():
        got, want, before = model(ids).logits, ref(ids).logits, _load(base)(ids).logits
    assert not torch.allclose(got, before, atol=1e-4)  # the edit changed the model
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(str(result.out))
    enc = tok("The patient presented with", return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 5


@pytest.mark.slow  # mergekit's import alone takes ~5 s of CPU
@pytest.mark.reference
def test_matches_mergekit_task_arithmetic(
    tiny: Any, tuned: Any, run_apply: Any, tmp_path: Path, ulp_close: Callable[..., bool]
) -> None:
    exe = Path(sys.executable).parent / "mergekit-yaml"
    if not exe.exists():
        pytest.skip("mergekit is not installed (pip install -c constraints.txt mergekit)")
    base = tiny("llama")
    ft1, ft2 = tuned(base, seed=1), tuned(base, seed=2)
    cfg = tmp_path / "mk.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\n"
        f"base_model: {base}\n"
        "models:\n"
        f"  - model: {ft1}\n    parameters: {{weight: 0.7}}\n"
        f"  - model: {ft2}\n    parameters: {{weight: -0.3}}\n"
        "parameters: {normalize: false}\n"
        "dtype: float32\n"
    )
    mk_out = tmp_path / "mk"
    subprocess.run([str(exe), str(cfg), str(mk_out), "--no-copy-tokenizer", "--quiet"], check=True, capture_output=True)
    ours, _ = run_apply(base, [f"{ft1}:0.7", f"{ft2}:-0.3"])
    theirs = read_state(mk_out)
    b, f1, f2 = read_state(base), read_state(ft1), read_state(ft2)
    assert set(ours) == set(theirs)
    for k in ours:
        assert ulp_close(ours[k], theirs[k], b[k], f1[k], f2[k], ulps=3.0), k
        assert not torch.equal(ours[k], b[k])


@pytest.mark.parametrize(("method", "density"), [("ties", 0.3), ("dare_linear", 0.6), ("dare_ties", 0.5)])
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_streamed_merges_equal_peft_on_whole_tensors(
    family: str, method: str, density: float, tiny: Any, tuned: Any, run_apply: Any
) -> None:
    from peft.utils import merge_utils

    base = tiny(family)
    fts = [tuned(base, seed=s) for s in (1, 2, 3)]
    lams = [0.8, 0.5, -0.4]
    out, result = run_apply(base, [f"{f}:{lam}" for f, lam in zip(fts, lams, strict=True)],
                            method=method, density=density, seed=7)  # fmt: skip
    b = read_state(base)
    states = [read_state(f) for f in fts]
    ck = open_checkpoint(base)
    fn = getattr(merge_utils, method)
    for name, w in b.items():
        ref = w.clone()
        for k, part in enumerate(ck.arch.parts(name, tuple(w.shape))):

            def sl(t: torch.Tensor) -> torch.Tensor:
                return t if part.dim is None else t.narrow(part.dim, part.start, part.stop - part.start)  # noqa: B023

            taus = [sl(s[name]) - sl(w) for s in states]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(part_seed(7, name, k))
                merged = fn(taus, torch.tensor(lams), density)
            sl(ref).add_(merged)
        assert torch.allclose(out[name], ref, atol=1e-7, rtol=1e-6), name
        assert not torch.allclose(out[name], w)
    meta = result.metadata["recipe"]
    assert meta["density"] == density and meta["method"] == method
    if method.startswith("dare"):
        assert meta["seed"] == 7 and meta["drop_rate"] == pytest.approx(1 - density)


def test_dare_is_seeded(tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny("llama")
    specs = [f"{tuned(base, seed=1)}:0.5", f"{tuned(base, seed=2)}:0.5"]
    a, _ = run_apply(base, specs, method="dare_linear", density=0.5, seed=1)
    b, _ = run_apply(base, specs, method="dare_linear", density=0.5, seed=1, options=None)
    c, _ = run_apply(base, specs, method="dare_linear", density=0.5, seed=2)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k])


def test_existing_output_refused_without_force(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.cli import cli

    base = tiny("llama")
    out = tmp_path / "o"
    out.mkdir()
    runner = CliRunner()
    res = runner.invoke(cli, ["apply", str(base), "-v", f"{tuned(base)}:-1", "-o", str(out), "-q"])
    assert res.exit_code == 2 and "already exists" in res.output and "--force" in res.output
    res = runner.invoke(cli, ["apply", str(base), "-v", f"{tuned(base)}:-1", "-o", str(out), "-q", "--force"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".o.tmp-*"))
    shutil.rmtree(out)
