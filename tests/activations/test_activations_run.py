"""End to end: counts and distances against an in-memory, hook-free reference; invariants; errors."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tunelens.api as tl
from tunelens.activations.bundled import bundled_corpus
from tunelens.activations.options import ActivationOptions
from tunelens.activations.run import CSV_COLUMNS
from tunelens.checkpoints.causal_lm import load_tokenizer
from tunelens.cli import cli
from tunelens.errors import TunelensError
from tunelens.testing import make_tiny, perturb, save_tokenizer

OPTS = {"seq_len": 16, "batch_size": 3, "quiet": True}


def _mlp_only(name: str) -> bool:
    return ".mlp." in name


def _docs(corpus_file: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]


def _reference_batches(tok: Any, docs: list[str], seq_len: int, batch: int) -> list[torch.Tensor]:
    """Naive packing: docs + EOS, BOS + (seq_len - 1) tokens; full sequences in groups, the rest alone."""
    stream: list[int] = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    cap = seq_len - 1
    seqs = [[tok.bos_token_id, *stream[i : i + cap]] for i in range(0, len(stream), cap)]
    full = [s for s in seqs if len(s) == seq_len]
    out = [torch.tensor(full[i : i + batch]) for i in range(0, len(full), batch)]
    return out + [torch.tensor([s]) for s in seqs if len(s) < seq_len]


def _reference_patterns(ref: Any, folder: Path, family: str, batches: list[torch.Tensor]) -> np.ndarray:
    """(layers, tokens, d_ff) patterns of a zero-attention model, BOS positions dropped, all in memory."""
    model = ref.load(folder)
    per_layer: list[list[np.ndarray]] = []
    for ids in batches:
        masks = ref.hand_masks(folder, ref.hidden_state_inputs(model, ids, family))
        if not per_layer:
            per_layer = [[] for _ in masks]
        for layer, m in enumerate(masks):
            per_layer[layer].append(m[:, 1:, :].reshape(-1, m.shape[-1]).numpy())
    return np.stack([np.concatenate(blocks) for blocks in per_layer])


def test_counts_and_distances_equal_in_memory_reference(
    zero_attn: Callable[[str], Path], ref: Any, corpus_file: Path, tmp_path: Path
) -> None:
    pre = zero_attn("llama")
    ft = perturb(pre, tmp_path / "ft", scale=0.05, only=_mlp_only)
    ft2 = perturb(pre, tmp_path / "ft2", scale=0.2, seed=3, only=_mlp_only)
    result = tl.activations(
        [f"pre={pre}", f"ft={ft}", f"ft2={ft2}"], corpus=corpus_file, options=ActivationOptions(**OPTS)
    )
    batches = _reference_batches(load_tokenizer((pre, {})), _docs(corpus_file), 16, 3)
    pats = [_reference_patterns(ref, f, "llama", batches) for f in (pre, ft, ft2)]
    tokens = pats[0].shape[1]
    s = result.summary
    assert s["corpus"]["tokens"] == tokens and tokens > 100
    for m, p in zip(s["models"], pats, strict=True):
        assert m["active"] == [int(x) for x in p.sum(axis=(1, 2))]
        assert m["fraction_active"] == pytest.approx(p.mean(axis=(1, 2)), rel=1e-14)
        assert m["tokens"] == tokens and m["d_ff"] == 64
    assert [(q["a"], q["b"]) for q in s["pairs"]] == [("pre", "ft"), ("pre", "ft2"), ("ft", "ft2")]
    for q, (i, j) in zip(s["pairs"], [(0, 1), (0, 2), (1, 2)], strict=True):
        diff = pats[i] != pats[j]
        assert q["sums"]["hamming_bits"] == [int(x) for x in diff.sum(axis=(1, 2))]
        assert q["distance"] == pytest.approx(diff.mean(axis=(1, 2)), rel=1e-14)
        assert q["mean"] == pytest.approx(diff.mean(), rel=1e-14)
        assert q["distance_max"] == pytest.approx(diff.sum(axis=2).max(axis=1) / 64)
        assert 0 < q["mean"] < 0.5
    store = s["pattern_store"]
    assert store["stored_models"] == ["pre", "ft"]  # every model but the last
    assert store["pattern_bytes"] == 2 * 3 * tokens * 8  # (models - 1) * layers * tokens * ceil(64 / 8)
    assert store["token_file_bytes"] == 4 * s["corpus"]["stream_tokens"]


def test_one_model_resident_at_a_time(
    tiny: Callable[..., Path], corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    import tunelens.activations.run as run

    loaded: list[weakref.ref[Any]] = []
    real = run.load_model

    def load(*args: Any, **kw: Any) -> Any:
        assert all(r() is None for r in loaded), "the previous model is still in memory"
        model = real(*args, **kw)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(run, "load_model", load)
    m = tiny("llama")
    opts = ActivationOptions(**OPTS, max_tokens=40)
    tl.activations([f"a={m}", f"b={m}", f"c={m}"], corpus=corpus_file, options=opts)
    assert len(loaded) == 3


def test_model_against_itself_is_exactly_zero(tiny: Callable[..., Path], corpus_file: Path) -> None:
    m = tiny("qwen3")
    s = tl.activations([f"x={m}", f"y={m}"], corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    assert s["pairs"][0]["distance"] == [0.0, 0.0, 0.0] and s["pairs"][0]["mean"] == 0.0
    assert s["models"][0]["active"] == s["models"][1]["active"]
    assert all(0.2 < f < 0.8 for f in s["models"][0]["fraction_active"])


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_negated_gate_of_layer_2_flips_layer_2_only(
    family: str, tiny: Callable[..., Path], negated_gate: Callable[[Path, int], Path], corpus_file: Path
) -> None:
    base = tiny(family)
    neg = negated_gate(base, 2)
    s = tl.activations([f"base={base}", f"neg={neg}"], corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    pair = s["pairs"][0]
    d = pair["distance"]
    assert d[0] == 0.0 and d[1] == 0.0
    assert d[2] > 0.99
    a, b = s["models"]
    assert a["active"][:2] == b["active"][:2]
    # act(-g) > 0 exactly where g < 0: never active in both, so the differing bits are all active bits; the
    # rest (1 - d) are exact zeros of the gate (the tiny models' BOS/EOS id 0 has a zero embedding row)
    assert pair["sums"]["hamming_bits"][2] == a["active"][2] + b["active"][2]


def test_levenshtein_option_equals_naive(zero_attn: Callable[[str], Path], ref: Any, corpus_file: Path) -> None:
    pre = zero_attn("gemma")
    ft = perturb(pre, pre.parent / "gemma-ft-lev", scale=0.1, only=_mlp_only)
    opts = ActivationOptions(**OPTS, distance="levenshtein", max_tokens=60)
    s = tl.activations([pre, ft], corpus=corpus_file, options=opts).summary
    tok = load_tokenizer((pre, {}))
    stream: list[int] = []
    for doc in _docs(corpus_file):
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = stream[:60]
    seqs = [[tok.bos_token_id, *stream[i : i + 15]] for i in range(0, 60, 15)]
    batches = [torch.tensor(seqs[:3]), torch.tensor(seqs[3:])]
    a, b = (_reference_patterns(ref, f, "gemma", batches) for f in (pre, ft))

    def lev(x: list[int], y: list[int]) -> int:
        prev = list(range(len(y) + 1))
        for i, u in enumerate(x, 1):
            cur = [i]
            for j, v in enumerate(y, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (u != v)))
            prev = cur
        return prev[-1]

    pair = s["pairs"][0]
    assert pair["metric"] == "levenshtein"
    for layer in range(3):
        edits = [lev(list(np.flatnonzero(x)), list(np.flatnonzero(y))) for x, y in zip(a[layer], b[layer], strict=True)]
        assert pair["sums"]["distance_units"][layer] == sum(edits)
        assert pair["distance"][layer] == pytest.approx(np.mean(edits) / 64, rel=1e-14)
        assert pair["hamming"][layer] == pytest.approx((a[layer] != b[layer]).mean(), rel=1e-14)
        assert 0 < pair["distance"][layer] <= pair["hamming"][layer]


def test_outputs_definitions_and_overwrite(tiny: Callable[..., Path], corpus_file: Path, tmp_path: Path) -> None:
    m = tiny("llama")
    out = tmp_path / "acts"
    tl.activations([f"a={m}", f"b={m}"], corpus=corpus_file, out=out, options=ActivationOptions(**OPTS))
    s = json.loads((out / "activations.json").read_text())
    for key in ("pattern", "fraction_active", "distance", "tokens"):
        assert key in s["definitions"]
    assert "excluded" in s["definitions"]["tokens"]
    assert s["corpus"]["files"][0]["sha256"] and s["corpus"]["seq_len"] == 16
    assert s["dtype"] == "float32" and s["tunelens_version"] and s["peak_rss_bytes"] > 0
    assert s["tokenizer"]["checked_equal"] == ["a", "b"]
    rows = list(csv.DictReader((out / "activations.csv").open()))
    assert list(rows[0]) == list(CSV_COLUMNS)
    model_rows = [r for r in rows if r["kind"] == "model" and r["name"] == "a" and r["layer"] != ""]
    assert [float(r["value"]) for r in model_rows] == s["models"][0]["fraction_active"]
    assert {r["metric"] for r in rows if r["kind"] == "pair"} >= {"distance", "hamming", "distance_p90"}
    with pytest.raises(TunelensError, match="already exists"):
        tl.activations([m], corpus=corpus_file, out=out, options=ActivationOptions(**OPTS))
    tl.activations([m], corpus=corpus_file, out=out, options=ActivationOptions(**OPTS), force=True)
    assert json.loads((out / "activations.json").read_text())["pairs"] == []


def test_no_store_gives_fractions_across_architectures(tiny: Callable[..., Path], corpus_file: Path) -> None:
    llama, gpt2 = tiny("llama"), tiny("gpt2")
    with pytest.raises(TunelensError, match="within one architecture"):
        tl.activations([llama, gpt2], corpus=corpus_file, options=ActivationOptions(**OPTS))
    opts = ActivationOptions(**OPTS, store=False)
    s = tl.activations([llama, gpt2], corpus=corpus_file, options=opts).summary
    assert s["pairs"] == [] and [m["d_ff"] for m in s["models"]] == [64, 128]
    alone = tl.activations([llama], corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    assert alone["models"][0]["active"] == s["models"][0]["active"]


def test_differing_tokenizers_are_refused(tiny: Callable[..., Path], corpus_file: Path, tmp_path: Path) -> None:
    base = tiny("llama")
    other = tmp_path / "other-tok"
    shutil.copytree(base, other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    save_tokenizer(other, vocab_size=300)
    with pytest.raises(TunelensError, match=r"tokenizers differ: other-tok .* vocab"):
        tl.activations([base, other], corpus=corpus_file, options=ActivationOptions(**OPTS))
    notok = tmp_path / "no-tok"
    shutil.copytree(base, notok, ignore=shutil.ignore_patterns("tokenizer*"))
    s = tl.activations([base, notok], corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    assert s["tokenizer"]["without_tokenizer_files"] == ["no-tok"] and s["pairs"][0]["mean"] == 0.0


def test_bad_inputs_are_one_line_errors(tiny: Callable[..., Path], corpus_file: Path, tmp_path: Path) -> None:
    small_vocab = make_tiny("llama", tmp_path / "v100", vocab_size=100)
    with pytest.raises(TunelensError, match="only 100 embeddings"):
        tl.activations([small_vocab], corpus=corpus_file, options=ActivationOptions(**OPTS))
    with pytest.raises(TunelensError, match="exceeds"):
        tl.activations([tiny("llama")], corpus=corpus_file, options=ActivationOptions(seq_len=1000, quiet=True))
    with pytest.raises(TunelensError, match="no such file"):
        tl.activations([tmp_path / "missing"], corpus=corpus_file)
    with pytest.raises(TunelensError, match="unique"):
        tl.activations([tiny("llama"), tiny("llama")], corpus=corpus_file)
    with pytest.raises(TunelensError, match="--seq-len"):
        ActivationOptions(seq_len=1)
    with pytest.raises(TunelensError, match="--device"):
        ActivationOptions(device="tpu")


def test_cuda_without_a_device_is_refused_early(
    tiny: Callable[..., Path], corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunelens.activations.run as run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run, "tokenize", lambda *a, **k: pytest.fail("tokenized before refusing"))
    with pytest.raises(TunelensError, match="--device cuda: no CUDA device"):
        tl.activations([tiny("llama")], corpus=corpus_file, options=ActivationOptions(**OPTS, device="cuda"))


def test_bfloat16_run(tiny: Callable[..., Path], corpus_file: Path) -> None:
    m = tiny("gemma2")
    opts = ActivationOptions(**OPTS, dtype="bfloat16")
    s = tl.activations([f"a={m}", f"b={m}"], corpus=corpus_file, options=opts).summary
    assert s["dtype"] == "bfloat16" and s["pairs"][0]["mean"] == 0.0
    fp32 = tl.activations([m], corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    assert s["models"][0]["fraction_active"] == pytest.approx(fp32["models"][0]["fraction_active"], abs=0.02)


def test_cli_runs_on_the_bundled_corpus(tiny: Callable[..., Path], tmp_path: Path) -> None:
    m = tiny("llama")
    out = tmp_path / "cli"
    args = ["activations", f"pre={m}", f"ft={m}", "-o", str(out), "--max-tokens", "200", "--seq-len", "32"]
    r = CliRunner().invoke(cli, [*args, "--dtype", "fp32"])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}/activations.json" in r.output and "FFN activations on 200 tokens" in r.output
    assert "patterns: 4.8 kB on disk while running (8 bytes per token per layer per stored model)" in r.output
    s = json.loads((out / "activations.json").read_text())
    assert s["corpus"]["files"][0]["path"] == str(bundled_corpus()) and s["corpus"]["tokens"] == 200
    assert s["dtype"] == "float32" and s["pattern_store"]["pattern_bytes"] == 3 * 200 * 8
    r = CliRunner().invoke(cli, ["activations", str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such file" in r.output


@pytest.mark.gpu
def test_cuda_counts_equal_cpu(tiny: Callable[..., Path], corpus_file: Path, device: str, tmp_path: Path) -> None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        pytest.skip("needs --device cuda and a CUDA device")
    m = tiny("llama")
    ft = perturb(m, tmp_path / "ft", scale=0.05, only=_mlp_only)
    models = [f"a={m}", f"b={ft}"]
    cpu = tl.activations(models, corpus=corpus_file, options=ActivationOptions(**OPTS)).summary
    gpu = tl.activations(models, corpus=corpus_file, options=ActivationOptions(**OPTS, device=device)).summary
    for c, g in zip(cpu["models"], gpu["models"], strict=True):
        assert g["fraction_active"] == pytest.approx(c["fraction_active"], abs=1e-3)
    # the device path packs on the GPU: the same distances up to the few bits fp32 GPU kernels flip
    assert gpu["pairs"][0]["distance"] == pytest.approx(cpu["pairs"][0]["distance"], abs=2e-3)
    assert gpu["pairs"][0]["mean"] > 0
