"""Scale-out figures: 8B-shaped runs on this machine, executors, and many fine-tunes in one diff.

Usage: python bench/bench_scale.py [--part 8b|executors|many|all] [--root /tmp/tl-bench-scale] [--keep]
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
from synthetic import EIGHT_B, ONE_B, Widths, make_pair  # noqa: E402

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
    ap.add_argument("--part", choices=["8b", "executors", "many", "all"], default="all")
    ap.add_argument("--root", type=Path, default=Path("/tmp/tl-bench-scale"))
    ap.add_argument("--ssa-layers", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    results["cold_cache_available"] = drop_caches()
    results["load_start"] = load()
    parts = ["many", "executors", "8b"] if args.part == "all" else [args.part]
    for part in parts:
        folder = args.root / part
        if part == "8b":
            results["8b"] = part_8b(folder, args.ssa_layers)
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
