"""Time the SSA basis and a whole-model ``tunelens subspace`` run (first vs second fine-tune of a base).

Usage: python bench/bench_subspace.py [--part matrices|model|all] [--layers 8] [--root /tmp/tunelens-bench-ssa]
                                      [--no-full-svd] [--keep] [--small] [--json F]

``matrices``: for 4096x4096 and 4096x14336 float32 matrices with a decaying spectrum
(``W = G · diag(d)``, ``G ~ N(0, 1)``, ``d_i = (i+1)^-0.5`` over the rows), time

- tunelens' ``decompose(W, "auto")`` (both singular bases, float64 compute, float32 storage),
- a float64 Gram eigh done by hand (``G = W Wᵀ``; ``eigh``; ``V = Wᵀ U / σ``), eigh alone and with V,
- full ``torch.linalg.svd(W.double(), full_matrices=False)``,

and the error of the top-k projectors (k at energy 0.9, and k = r/2) against the full SVD's:
``sin θ_max = ‖(I − P_ref) Q_k‖₂`` for ``Q_k`` the method's basis (the 2-norm of ``P − P_ref``).

``model``: a synthetic bf16 Llama of 8B widths (hidden 4096, intermediate 14336, 32 heads, 8 kv heads,
``--layers`` layers, vocabulary 32000: SSA never reads embeddings) written by bench/synthetic.py,
then ``tunelens subspace base ft0`` with an empty cache (first fine-tune) and ``tunelens subspace
base ft1`` with the cache filled (second fine-tune), each in a fresh process; wall time, peak RSS,
and the second run again with ``--tau-spectrum`` (opt-in: its cost is per fine-tune).

Every figure is written with ``uptime``'s load averages and the torch thread count: this machine's
2 cores are shared, so the load says how much of them the run had. Results: bench/results/subspace.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tunelens.stats.subspace_basis import Criterion, decompose

sys.path.insert(0, str(Path(__file__).parent))
from measure import load, run_child  # noqa: E402
from synthetic import Widths, write_model  # noqa: E402


def timed_call(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def gram_by_hand(w: torch.Tensor, with_other_side: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Float64 Gram eigh of the smaller side, by hand: ``(σ desc, small-side vectors, other side or None)``."""
    a = w.double()
    wide = a.shape[0] <= a.shape[1]
    side = a if wide else a.T
    lam, e = torch.linalg.eigh(side @ side.T)
    lam, e = lam.flip(0), e.flip(1)
    s = lam.clamp_min(0).sqrt()
    other = (side.T @ e) / s if with_other_side else None
    return s, e, other


def sin_max(ref: torch.Tensor, q: torch.Tensor) -> float:
    """``‖(I − ref refᵀ) q‖₂`` for orthonormal ``ref``, ``q`` (float64): the sine of the largest principal angle."""
    ref, q = ref.double(), q.double()
    resid = q - ref @ (ref.T @ q)
    return float(torch.linalg.matrix_norm(resid, ord=2))


def bench_matrix(shape: tuple[int, int], full_svd: bool) -> dict[str, Any]:
    out, inp = shape
    g = torch.Generator().manual_seed(0)
    d = torch.arange(1, out + 1, dtype=torch.float32).pow(-0.5)
    w = torch.randn(shape, generator=g) * d[:, None]
    res: dict[str, Any] = {"shape": list(shape), "load_before": load()}
    basis, t_ours = timed_call(lambda: decompose(w, "auto"))
    res["tunelens_s"] = round(t_ours, 2)
    res["tunelens_method"] = basis.method
    res["load_after_tunelens"] = load()
    (s_h, e_h, _), t_eigh = timed_call(lambda: gram_by_hand(w, with_other_side=False))
    res["gram_eigh_by_hand_s"] = round(t_eigh, 2)
    (_, _, other), t_hand = timed_call(lambda: gram_by_hand(w, with_other_side=True))
    res["gram_eigh_plus_other_side_by_hand_s"] = round(t_hand, 2)
    res["ratio_tunelens_to_by_hand_both_sides"] = round(t_ours / t_hand, 3)
    res["ratio_tunelens_to_eigh_alone"] = round(t_ours / t_eigh, 3)
    res["load_after_by_hand"] = load()
    r = min(shape)
    k90 = Criterion("energy", 0.9).k(basis.S)
    res["k_energy_0.9"] = k90
    res["k_half"] = r // 2
    if full_svd:
        (u, s, vh), t_svd = timed_call(lambda: torch.linalg.svd(w.double(), full_matrices=False))
        res["full_svd_s"] = round(t_svd, 2)
        res["load_after_svd"] = load()
        res["max_rel_sigma_error_vs_svd"] = float(((basis.S - s).abs() / s).max())
        v = vh.T
        wide = out <= inp
        hand_u, hand_v = (e_h, other) if wide else (other, e_h)
        assert hand_u is not None and hand_v is not None
        errs: dict[str, Any] = {}
        for k in sorted({k90, r // 2}):
            errs[f"k={k}"] = {
                "tunelens_U": sin_max(u[:, :k], basis.U[:, :k]),
                "tunelens_V": sin_max(v[:, :k], basis.V[:, :k]),
                "by_hand_U": sin_max(u[:, :k], hand_u[:, :k]),
                "by_hand_V": sin_max(v[:, :k], hand_v[:, :k]),
            }
        res["projector_error_vs_full_svd"] = errs
    return res


def timed_run(cmd: list[str]) -> dict[str, Any]:
    """Wall time and the child's peak RSS (``os.wait4``), with the load before and after."""
    c = run_child(cmd)
    return {"wall_s": round(c.wall_s, 2), "peak_rss_mb": round(c.peak_rss_bytes / 2**20, 1),
            "load_before": c.load_before, "load_after": c.load_after}  # fmt: skip


def bench_model(root: Path, layers: int, workers: int, small: bool) -> dict[str, Any]:
    w = Widths(hidden=4096, intermediate=14336, layers=layers, heads=32, kv_heads=8, vocab=32000)
    if small:
        w = Widths(hidden=256, intermediate=896, layers=layers, heads=8, kv_heads=2, vocab=1000)
    t0 = time.perf_counter()
    base = root / "base"
    if not (base / "config.json").exists():
        write_model(base, w, seed=1)
    fts = []
    for i in range(2):
        ft = root / f"ft{i}"
        if not (ft / "config.json").exists():
            write_model(ft, w, seed=10 + i, base_seed=1)
        fts.append(ft)
    res: dict[str, Any] = {"widths": w.__dict__, "generate_s": round(time.perf_counter() - t0, 1)}
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)

    def cmd(ft: Path, out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "tunelens", "subspace", str(base), str(ft), "-o", str(root / out), "-q",
                "--force", "--cache-dir", str(cache), "--workers", str(workers), *extra]  # fmt: skip

    res["first_finetune"] = timed_run(cmd(fts[0], "out0"))
    s0 = json.loads((root / "out0" / "summary.json").read_text())
    res["first_finetune"]["cache"] = s0["cache"]
    res["first_finetune"]["decomposition"] = s0["decomposition"]
    res["second_finetune"] = timed_run(cmd(fts[1], "out1"))
    s1 = json.loads((root / "out1" / "summary.json").read_text())
    res["second_finetune"]["cache"] = s1["cache"]
    res["second_finetune_tau_spectrum"] = timed_run(cmd(fts[1], "out2", "--tau-spectrum"))
    first = res["first_finetune"]["wall_s"]
    res["speedup_second"] = round(first / res["second_finetune"]["wall_s"], 2)
    res["tau_spectrum_extra_s"] = round(
        res["second_finetune_tau_spectrum"]["wall_s"] - res["second_finetune"]["wall_s"], 1
    )
    res["cache_bytes"] = sum(p.stat().st_size for p in cache.rglob("*.safetensors"))
    res["tensors"] = s0["cache"]["misses"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["matrices", "model", "all"], default="all")
    ap.add_argument("--root", type=Path, default=Path("/tmp/tunelens-bench-ssa"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-full-svd", action="store_true", help="skip torch.linalg.svd (and the projector errors)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic models")
    ap.add_argument("--small", action="store_true", help="smoke test: 16x smaller widths")
    ap.add_argument("--json", type=Path, help="results file [default: bench/results/subspace.json]")
    args = ap.parse_args()
    dest = Path(__file__).parent / "results"
    dest.mkdir(exist_ok=True)
    path = args.json or dest / ("subspace-small.json" if args.small else "subspace.json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["conditions"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs: see the load figures)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_at_start": load(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.part in ("matrices", "all"):
        sizes = ((256, 256), (256, 896)) if args.small else ((4096, 4096), (4096, 14336))
        results["matrices"] = [bench_matrix(s, not args.no_full_svd) for s in sizes]
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["matrices"], indent=2), flush=True)
    if args.part in ("model", "all"):
        args.root.mkdir(parents=True, exist_ok=True)
        try:
            results["model"] = bench_model(args.root, args.layers, args.workers, args.small)
        finally:
            if not args.keep:
                shutil.rmtree(args.root, ignore_errors=True)
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["model"], indent=2))


if __name__ == "__main__":
    main()
