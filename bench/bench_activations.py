"""Cost of ``tunelens activations``: capture vs a plain forward, and peak RSS as the corpus grows 10x.

Usage: python bench/bench_activations.py [--root /tmp/tunelens-bench-act] [--shape smollm2] [--tokens 2048]
       [--reps 3] [--rss-tokens 512] [--dtype float32] [--json out.json]

The model is a randomly initialised Llama of SmolLM2-135M's shape (hidden 576, 30 layers, MLP width
1536, 9 heads / 3 KV heads, vocabulary 49152) built from a config, saved once as safetensors with
the tiny byte-level tokenizer of ``tunelens.testing`` (the ids only index the embedding: the speed
of a forward does not depend on which ids they are). ``--shape tiny`` uses the test models instead.

1. Overhead: the same batches of the bundled HPO corpus (``--tokens`` tokens, sequences of 256
   (64 for tiny), batches of 8) run through the model's decoder four ways, interleaved ``--reps`` times:
   ``plain`` (the bare forward in ``torch.inference_mode``, no hooks), and the three capture modes
   of :func:`tunelens.activations.collect.collect`: ``fractions`` (counts only, ``--no-store``),
   ``store`` (counts + packed patterns written to disk: the first model) and ``compare`` (counts +
   reading the first model's patterns back and summing distances: every later model), after one
   unrecorded plain warm-up, the order rotated each repetition. Overhead is
   ``t_capture / t_plain - 1`` per repetition (wall and process CPU time), the median is reported,
   and, robust to a shared machine, ``overhead_in_hooks``: the thread CPU time spent inside the
   capture hooks over the CPU time of the rest of the same run. ``--threads 1`` (default) keeps CPU
   time clean of thread-pool spinning on an oversubscribed machine.
2. Memory: ``tunelens activations a=M b=M --corpus HPO --max-tokens N`` and ``10 N`` in fresh
   processes (two models: the first stores, the second compares); peak RSS is the child's own
   ``ru_maxrss`` (``os.wait4``). Flat means the 10x run's peak is within noise of the 1x run's.

The machine is shared: ``os.getloadavg()`` is recorded before and after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_child  # noqa: E402
from tunelens.activations.bundled import bundled_corpus
from tunelens.activations.collect import collect
from tunelens.activations.compare import PairSums
from tunelens.activations.corpus import find_files, tokenize
from tunelens.activations.hooks import Taps
from tunelens.activations.loading import load_model
from tunelens.activations.options import ActivationOptions
from tunelens.activations.store import PatternStore
from tunelens.checkpoints.causal_lm import load_tokenizer
from tunelens.checkpoints.index import open_checkpoint
from tunelens.testing import make_tiny, save_tokenizer

SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}
SEQ_LEN, BATCH = 256, 8  # the tiny models have 128 positions: --shape tiny uses 64


def build_model(root: Path, shape: str) -> Path:
    """The bench model folder (built once, reused)."""
    folder = root / f"model-{shape}"
    if (folder / "config.json").exists():
        return folder
    if shape == "tiny":
        return make_tiny("llama", folder)
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_135M))  # type: ignore[no-untyped-call]
    model.save_pretrained(str(folder))
    save_tokenizer(folder)
    return folder


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2)}


class HookClock:
    """Time spent inside the capture hooks (mask, count, pack, write, compare), wall and thread CPU."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._real = Taps._receive

    def __enter__(self) -> HookClock:
        real, clock = self._real, self

        def timed(taps: Taps, layer: int, values: torch.Tensor) -> None:
            w0, c0 = time.perf_counter(), time.thread_time()
            real(taps, layer, values)
            clock.wall += time.perf_counter() - w0
            clock.cpu += time.thread_time() - c0

        Taps._receive = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Taps._receive = self._real  # type: ignore[method-assign]


def overhead(folder: Path, tokens: int, reps: int, dtype: str, seq_len: int, work: Path) -> dict[str, Any]:
    """Tokens/s of the plain forward and of each capture mode on the same batches, interleaved."""
    opts = ActivationOptions(seq_len=seq_len, batch_size=BATCH, max_tokens=tokens, quiet=True)
    corpus = tokenize(find_files([bundled_corpus()]), load_tokenizer((folder, {})), opts, work)
    model = load_model(open_checkpoint(str(folder)), dtype, "cpu")
    backbone = getattr(model, "base_model", model)
    batches = [torch.from_numpy(b.input_ids) for b in corpus.batches()]
    cfg = model.config
    layers, d_ff = cfg.num_hidden_layers, cfg.intermediate_size

    def plain() -> None:
        with torch.inference_mode():
            for ids in batches:
                backbone(input_ids=ids, use_cache=False)

    store = PatternStore(work / "ref.u8", layers, corpus.tokens, d_ff)
    collect(model, "ref", corpus, pattern="gate", own=store, quiet=True)  # the stored patterns `compare` reads

    def stored() -> None:
        with PatternStore(work / "own.u8", layers, corpus.tokens, d_ff) as own:
            collect(model, "m", corpus, pattern="gate", own=own, quiet=True)

    def compared() -> None:
        pair = PairSums("ref", "m", "hamming", layers, d_ff)
        collect(model, "m", corpus, pattern="gate", refs=(store,), pairs=(pair,), quiet=True)
        assert pair.hamming_bits.sum() == 0  # the same model: a real comparison, of identical patterns

    runs = {
        "plain": plain,
        "fractions": lambda: collect(model, "m", corpus, pattern="gate", quiet=True),
        "store": stored,
        "compare": compared,
    }
    plain()  # warm up (allocator, kernels), not recorded
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    hook_cpu: dict[str, list[float]] = {k: [] for k in runs}
    before = load()
    names = list(runs)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order: no position bias
            fn = runs[name]
            with HookClock() as hooks:
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
            hook_cpu[name].append(hooks.cpu)
    store.close()
    out: dict[str, Any] = {
        "tokens": corpus.tokens,
        "seq_len": seq_len,
        "batch_size": BATCH,
        "batches": len(batches),
        "layers": layers,
        "d_ff": d_ff,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "load_before": before,
        "load_after": load(),
    }
    for name in runs:
        out[name] = {
            "tokens_per_s_median": round(corpus.tokens / statistics.median(wall[name]), 1),
            "tokens_per_s_best": round(corpus.tokens / min(wall[name]), 1),
            "wall_s": [round(x, 3) for x in wall[name]],
            "cpu_s": [round(x, 3) for x in cpu[name]],
        }
        if name != "plain":
            per_rep = [c / p - 1 for c, p in zip(wall[name], wall["plain"], strict=True)]
            per_rep_cpu = [c / p - 1 for c, p in zip(cpu[name], cpu["plain"], strict=True)]
            out[name]["overhead_wall_median"] = round(statistics.median(per_rep), 4)
            out[name]["overhead_cpu_median"] = round(statistics.median(per_rep_cpu), 4)
            out[name]["overhead_best_vs_best"] = round(min(wall[name]) / min(wall["plain"]) - 1, 4)
            out[name]["overhead_cpu_best_vs_best"] = round(min(cpu[name]) / min(cpu["plain"]) - 1, 4)
            # robust to a shared machine: CPU time inside the hooks over the CPU time of the rest of the run
            direct = [h / (c - h) for h, c in zip(hook_cpu[name], cpu[name], strict=True)]
            out[name]["hook_cpu_s"] = [round(x, 3) for x in hook_cpu[name]]
            out[name]["overhead_in_hooks_median"] = round(statistics.median(direct), 4)
    return out


def peak_rss(folder: Path, tokens: int, dtype: str, seq_len: int, work: Path) -> dict[str, Any]:
    """Peak RSS of the whole command in a fresh process (two models: one stores, one compares)."""
    exe = Path(sys.executable).parent / "tunelens"
    out = work / f"out-{tokens}"
    cmd = [str(exe), "activations", f"a={folder}", f"b={folder}", "--max-tokens", str(tokens)]
    cmd += ["--seq-len", str(seq_len), "--batch-size", str(BATCH), "--dtype", dtype, "-q", "--force"]
    cmd += ["--work-dir", str(work), "-o", str(out)]
    before = load()
    c = run_child(cmd)
    summary = json.loads((out / "activations.json").read_text())
    return {
        "tokens": summary["corpus"]["tokens"],
        "wall_s": round(c.wall_s, 2),
        "peak_rss_mb": round(c.peak_rss_bytes / 2**20, 1),
        "pattern_bytes": summary["pattern_store"]["pattern_bytes"],
        "distance_mean": summary["pairs"][0]["mean"],
        "load_before": before,
        "load_after": load(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("/tmp/tunelens-bench-act"))
    ap.add_argument("--shape", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--model", type=Path, help="run on this model folder instead (e.g. real SmolLM2 weights)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per overhead run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rss-tokens", type=int, default=512, help="N for the RSS runs (N and 10 N)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the overhead part (CPU time is "
        "only a clean measure with one thread on a shared machine)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    folder = args.model or build_model(args.root, args.shape)
    seq_len = 64 if args.shape == "tiny" else SEQ_LEN
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        },
        "model": {"shape": args.shape, "folder": str(folder)},
    }
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        report["overhead"] = overhead(folder, args.tokens, args.reps, args.dtype, seq_len, Path(tmp))
        print(json.dumps(report["overhead"], indent=1), flush=True)
    if not args.skip_rss:
        with tempfile.TemporaryDirectory(dir=args.root) as tmp:
            small = peak_rss(folder, args.rss_tokens, args.dtype, seq_len, Path(tmp))
            large = peak_rss(folder, 10 * args.rss_tokens, args.dtype, seq_len, Path(tmp))
        report["rss"] = {
            "small": small,
            "large": large,
            "growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
        }
        print(json.dumps(report["rss"], indent=1), flush=True)
    report["machine"]["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
