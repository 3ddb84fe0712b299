"""Scale-out figures: 8B-shaped runs on this machine, executors, and many fine-tunes in one diff.

Usage: python bench/bench_scale.py [--part 8b|forward|executors|many|all] [--root /tmp/tl-bench-scale] [--keep]
                                   [--ssa-layers 1] [--json F]

``8b``: a synthetic bf16 checkpoint with Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 layers,
vocabulary 128256, 32 heads / 8 kv heads; ~16 GB) and one fine-tune of it (bench/synthetic.py), then,
each in a fresh process from a dropped page cache:

- ``tunelens diff base ft`` against the cold read floor (``cat`` of the same files);
- ``tunelens apply base -v ft:-1`` (negation) against the read + write floor (``cat`` of the inputs,
  then ``dd`` of as many bytes to the output disk, flushed) — the wall time includes ``sync``;
- ``tunelens subspace base ft --layers 0-{N-1}`` (``--ssa-layers``; every layer has the same shapes,
  so the whole-model time is 32/N times it; 0 skips it), cache empty, default k (η = 0.9); then the same with the
  cache filled (a second fine-tune of this base costs only the projections), and again with
  ``--tau-spectrum``.

``forward``: real-size forward passes on the 8B-shaped bf16 base alone (the same widths and weights as
``8b``'s base; the tiny test tokenizer of ``tunelens.testing``, 320 ids, far below the 128256
embeddings: forward cost depends on token counts, not on which tokenizer made them), each in a fresh
process with the page cache as found (dropped when allowed) and ``MemAvailable`` recorded:

- ``load_and_touch``: transformers' ``from_pretrained(dtype=bfloat16)``, then one byte of every 4 KiB
  page of every parameter read (each page faulted in once, next to no compute) — the memory and
  loading floor of any forward pass;
- ``tunelens activations --dtype bf16 --seq-len 256`` on the first 256 and 1024 tokens of a text
  corpus; ``tokens_per_s`` = corpus tokens / the command's wall time (start-up and load included),
  ``marginal_tokens_per_s`` = 768 / (wall(1024) − wall(256)) (the forward pass alone);
- ``tunelens evaluate --dtype bfloat16`` on 4 MCQA items; ``tokens_per_s`` = tokens forwarded / the
  task's own scoring seconds (results.json ``timing``): per item the context tokens, plus every choice's
  continuation tokens when a choice is longer than one token (``evaluation/mcqa.py``'s two paths).

``rss_ratio`` = peak RSS / the weights' bytes (target ≤ 1.25: the weights held once).

``executors``: ``diff`` of a 1B-shaped pair (bench/synthetic.py ``ONE_B``) with the thread executor
(2 workers) and with ``--executor process`` and ``--executor ray`` at 1, 2 and 4 workers, page cache
warm (the inputs are read once before), so the figures compare the executors, not the disk.

``many``: ``diff`` of a base of 0.2B shapes (hidden 1024, intermediate 4096, 8 layers) against N = 1, 3
and 10 fine-tunes in one pass, warm: the base is read once, memory is one tensor × (N + 1) in flight,
and the vector-cosine matrix costs N(N+1)/2 products per element.

Peak RSS is the command's own (``os.wait4``); with ``--executor process`` the workers' memory is in
``workers_peak_rss_mb`` (``RUSAGE_CHILDREN`` of the command, recorded in its summary.json). Every
figure carries the load averages: this machine's 2 cores are shared. Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import drop_caches, load, run_child  # noqa: E402
from synthetic import EIGHT_B, ONE_B, Widths, make_pair, write_model  # noqa: E402

SMALL = Widths(hidden=1024, intermediate=4096, layers=8, heads=16, kv_heads=4, vocab=32000)


def files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*.safetensors"))]


def nbytes(paths: list[str]) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def timed(cmd: list[str], *, cold: bool, sync: bool = False) -> dict[str, Any]:
    c = run_child(cmd, cold=cold, sync=sync)
    return {
        "wall_s": round(c.wall_s, 2),
        "peak_rss_mb": round(c.peak_rss_bytes / 2**20, 1),
        "cpu_s": round(c.cpu_user_s + c.cpu_sys_s, 1),
        "cold": c.cold,
        "load": [c.load_before, c.load_after],
    }


def tl(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelens", *args, "-q", "--force"]


def part_8b(root: Path, ssa_layers: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    base, (ft,) = make_pair(root, EIGHT_B, n_tuned=1)
    res: dict[str, Any] = {"widths": EIGHT_B.__dict__, "generate_s": round(time.perf_counter() - t0, 1)}
    inputs = files(base) + files(ft)
    res["bytes_per_model"] = nbytes(files(base))
    res["read_floor_cold"] = timed(["cat", *inputs], cold=True)
    res["diff_cold"] = timed(tl("diff", str(base), str(ft), "-o", str(root / "out-diff")), cold=True)
    res["diff_ratio_to_floor"] = round(res["diff_cold"]["wall_s"] / res["read_floor_cold"]["wall_s"], 2)
    out_bytes = res["bytes_per_model"]
    dd = root / "dd.bin"
    floor_cmd = ["bash", "-c", f"cat {' '.join(inputs)} > /dev/null && "
                 f"dd if=/dev/zero of={dd} bs=16M count={out_bytes // 2**24} conv=fdatasync status=none"]  # fmt: skip
    res["read_write_floor_cold"] = timed(floor_cmd, cold=True, sync=True)
    dd.unlink(missing_ok=True)
    res["apply_cold"] = timed(
        tl("apply", str(base), "-v", f"{ft}:-1", "-o", str(root / "out-apply")), cold=True, sync=True
    )
    res["apply_ratio_to_floor"] = round(res["apply_cold"]["wall_s"] / res["read_write_floor_cold"]["wall_s"], 2)
    shutil.rmtree(root / "out-apply", ignore_errors=True)
    if ssa_layers < 1:  # --ssa-layers 0: diff and apply only
        return res
    cache = root / "ssa-cache"
    shutil.rmtree(cache, ignore_errors=True)
    layers = f"0-{ssa_layers - 1}"
    res["subspace_layers"] = ssa_layers
    res["subspace_first_finetune"] = timed(
        tl("subspace", str(base), str(ft), "-o", str(root / "out-ssa"), "--layers", layers, "--cache-dir", str(cache)),
        cold=True,
    )
    summary = json.loads((root / "out-ssa" / "summary.json").read_text())
    res["subspace_first_finetune"]["decomposition"] = summary["decomposition"]
    res["subspace_whole_model_estimate_min"] = round(
        res["subspace_first_finetune"]["wall_s"] * EIGHT_B.layers / ssa_layers / 60, 1
    )
    second = tl(
        "subspace", str(base), str(ft), "-o", str(root / "out-ssa2"), "--layers", layers, "--cache-dir", str(cache)
    )
    res["subspace_second_finetune"] = timed(second, cold=True)
    res["subspace_second_speedup"] = round(
        res["subspace_first_finetune"]["wall_s"] / res["subspace_second_finetune"]["wall_s"], 2
    )
    res["subspace_second_finetune_tau_spectrum"] = timed([*second, "--tau-spectrum"], cold=True)
    return res


MCQA = [
    ("Which organ filters blood?", ["the heart", "the kidney", "the lung", "the skin"], 1),
    ("What is high blood pressure called?", ["hypertension", "fever", "cough", "seizure"], 0),
    ("Solve for x: 2x + 3 = 11.", ["2", "3", "4", "5"], 2),
    ("def add(a, b): return a + b. What is add(1, 2)?", ["1", "2", "3", "12"], 2),
]
TOUCH = (
    "import sys, torch; from transformers import AutoModelForCausalLM; "
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, use_safetensors=True, "
    "local_files_only=True); "
    "print(sum(int(p.detach().view(-1).view(torch.uint8)[::4096].sum()) for p in m.parameters()))"
)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return -1


def part_forward(root: Path) -> dict[str, Any]:
    import torch

    from tunelens.evaluation.mcqa import encode_pair
    from tunelens.testing import _TEXT, save_tokenizer

    t0 = time.perf_counter()
    base = root / "base"
    if not (base / "config.json").exists():
        write_model(base, EIGHT_B, seed=1)
    if not (base / "tokenizer.json").exists():
        save_tokenizer(base)
    weights = nbytes(files(base))
    res: dict[str, Any] = {
        "widths": EIGHT_B.__dict__,
        "weights_bytes": weights,
        "dtype": "bfloat16",
        "tokenizer": "tunelens.testing.save_tokenizer (byte-level BPE, 320 ids)",
        "torch_threads": torch.get_num_threads(),
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    corpus = root / "corpus.txt"
    corpus.write_text(_TEXT * 200)
    task = root / "mcqa.jsonl"
    task.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MCQA))

    def run(name: str, cmd: list[str]) -> dict[str, Any]:
        avail = mem_available()
        r = timed(cmd, cold=True)
        r["mem_available_before_bytes"] = avail
        r["rss_ratio"] = round(r["peak_rss_mb"] * 2**20 / weights, 3)
        print(name, json.dumps(r), flush=True)
        return r

    res["load_and_touch"] = run("load_and_touch", [sys.executable, "-c", TOUCH, str(base)])
    for n in (256, 1024):
        out = root / f"out-act-{n}"
        r = run(f"activations_{n}", tl("activations", str(base), "--corpus", str(corpus), "--max-tokens", str(n),
                                       "--seq-len", "256", "--dtype", "bf16", "-o", str(out)))  # fmt: skip
        summary = json.loads((out / "activations.json").read_text())
        r["tokens"] = summary["models"][0]["tokens"]
        r["command_wall_seconds"] = summary["wall_seconds"]
        r["tokens_per_s"] = round(r["tokens"] / r["wall_s"], 2)
        r["fraction_active_mean"] = summary["models"][0]["mean"]
        res[f"activations_{n}"] = r
    a, b = res["activations_256"], res["activations_1024"]
    res["activations_marginal_tokens_per_s"] = round((b["tokens"] - a["tokens"]) / (b["wall_s"] - a["wall_s"]), 2)
    out = root / "out-eval"
    r = run("evaluate", tl("evaluate", str(base), "-t", f"mcqa={task}", "--dtype", "bfloat16", "-o", str(out)))
    results = json.loads((out / "results.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    forwarded = 0
    for line in (out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        pairs = [encode_pair(tok, s["prompt"], c) for c in s["continuations"]]
        conts = [len(c) for _, c in pairs]
        forwarded += len(pairs[0][0]) + (0 if all(n == 1 for n in conts) else sum(conts))
    timing = results["timing"][0]
    r["items"] = timing["items"]
    r["tokens_forwarded"] = forwarded
    r["scoring_seconds"] = timing["seconds"]
    r["tokens_per_s"] = round(forwarded / timing["seconds"], 2)
    r["items_per_s"] = round(timing["items_per_second"], 3)
    r["acc"] = next(x["value"] for x in results["results"] if x["metric"] == "acc")
    res["evaluate"] = r
    return res


def part_executors(root: Path) -> dict[str, Any]:
    base, (ft,) = make_pair(root, ONE_B, n_tuned=1)
    subprocess.run(["cat", *files(base), *files(ft)], stdout=subprocess.DEVNULL, check=True)  # warm
    res: dict[str, Any] = {"widths": ONE_B.__dict__, "bytes_read": nbytes(files(base) + files(ft))}
    out = str(root / "out-x")
    res["thread_2"] = timed(tl("diff", str(base), str(ft), "-o", out), cold=False)
    ref = json.loads((root / "out-x" / "summary.json").read_text())["models"]
    for kind in ("process", "ray"):
        for workers in (1, 2, 4):
            r = timed(
                tl("diff", str(base), str(ft), "-o", out, "--executor", kind, "--workers", str(workers)), cold=False
            )
            got = json.loads((root / "out-x" / "summary.json").read_text())
            r["same_numbers_as_thread"] = got["models"] == ref
            r["workers_peak_rss_mb"] = round(got.get("peak_rss_children_bytes", 0) / 2**20, 1)
            res[f"{kind}_{workers}"] = r
    return res


def part_many(root: Path) -> dict[str, Any]:
    base, tuned = make_pair(root, SMALL, n_tuned=10)
    res: dict[str, Any] = {"widths": SMALL.__dict__, "bytes_per_model": nbytes(files(base))}
    for n in (1, 3, 10):
        subprocess.run(["cat", *files(base), *(f for t in tuned[:n] for f in files(t))], stdout=subprocess.DEVNULL)
        r = timed(tl("diff", str(base), *map(str, tuned[:n]), "-o", str(root / "out-many")), cold=False)
        r["per_finetune_s"] = round(r["wall_s"] / n, 2)
        res[f"n_{n}"] = r
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["8b", "forward", "executors", "many", "all"], default="all")
    ap.add_argument("--root", type=Path, default=Path("/tmp/tl-bench-scale"))
    ap.add_argument("--ssa-layers", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    results["cold_cache_available"] = drop_caches()
    results["load_start"] = load()
    parts = ["many", "executors", "8b", "forward"] if args.part == "all" else [args.part]
    for part in parts:
        folder = args.root / part
        if part == "8b":
            results["8b"] = part_8b(folder, args.ssa_layers)
        elif part == "forward":
            results["forward"] = part_forward(folder)
        elif part == "executors":
            results["executors"] = part_executors(folder)
        else:
            results["many"] = part_many(folder)
        args.json.parent.mkdir(exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(json.dumps({part: results[part]}, indent=2), flush=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
