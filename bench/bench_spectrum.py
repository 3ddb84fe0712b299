"""What ``spectrum`` costs on one 8B-sized weight, against ``subspace`` of it and a float64 Gram eigh.

Usage: python bench/bench_spectrum.py [--shape 4096x14336] [--repeat 1] [--json F]

For a float32 ``W`` with a decaying spectrum (``W = G · diag(d)``, ``d_i = (i+1)^-0.5`` over the rows, as
bench_subspace.py) and a dense full-rank ``τ = 1e-3 · N(0, 1)``, time, in this process:

- ``gram_eigh``: one float64 Gram eigh by hand (``G = W Wᵀ`` of the smaller side in float64, then
  ``torch.linalg.eigh``, eigenvectors included) — the unit of the acceptance target;
- ``basis``: tunelens' ``decompose(W)`` (what the cache holds; both commands share it, so neither pays it
  after the first fine-tune of a base);
- ``subspace``: what ``subspace`` computes per model with the basis cached (``share_curves`` at k = η 0.9);
- ``spectrum``: what ``spectrum`` computes per model with the basis cached (:func:`tunelens.stats.spectrum.measure`:
  τ's Gram eigh, W_ft's Gram eigh, amplification, intruders);
- ``spectrum_lora``: the same for a rank-16 τ given as factors (the adapter path: no Gram of τ).

Target (issue 16): ``spectrum − subspace ≤ 2 × gram_eigh``. Reading the tensors costs both commands the same and is
not timed. Every figure is written with the load averages before and after: this machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tunelens.stats.spectrum import SpectrumOptions, measure
from tunelens.stats.spectrum_math import LowRank
from tunelens.stats.subspace import share_curves
from tunelens.stats.subspace_basis import Criterion, decompose

sys.path.insert(0, str(Path(__file__).parent))
from measure import load  # noqa: E402


def best(fn: Any, repeat: int) -> tuple[Any, float]:
    """The result of ``fn`` and its fastest wall time over ``repeat`` calls."""
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def gram_eigh(w: torch.Tensor) -> torch.Tensor:
    a = w.double()
    side = a if a.shape[0] <= a.shape[1] else a.T
    _lam, e = torch.linalg.eigh(side @ side.T)
    return e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "spectrum.json")
    args = ap.parse_args()
    out, inp = (int(x) for x in args.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out, inp, generator=g) * torch.arange(1, out + 1, dtype=torch.float32).pow(-0.5)[:, None]
    tau = torch.randn(out, inp, generator=g) * 1e-3
    lora = LowRank(torch.randn(out, 16, generator=g) * 1e-2, torch.randn(16, inp, generator=g) * 1e-2)
    res: dict[str, Any] = {
        "shape": [out, inp],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_before": load(),
    }
    _, res["gram_eigh_s"] = best(lambda: gram_eigh(w), args.repeat)
    basis, res["basis_s"] = best(lambda: decompose(w, "auto"), 1)
    k = Criterion("energy", 0.9).k(basis.S)
    res["k_energy_0.9"] = k
    _, res["subspace_s"] = best(lambda: share_curves(basis, tau, k), args.repeat)
    opts = SpectrumOptions()
    (row, method), res["spectrum_s"] = best(lambda: measure(w, basis, tau, opts), args.repeat)
    res["spectrum_method"] = method
    res["spectrum_row"] = row
    (row_l, method_l), res["spectrum_lora_s"] = best(lambda: measure(w, basis, lora, opts), args.repeat)
    res["spectrum_lora_method"] = method_l
    res["spectrum_lora_row"] = row_l
    res["load_after"] = load()
    extra = res["spectrum_s"] - res["subspace_s"]
    res["extra_over_subspace_in_gram_eighs"] = round(extra / res["gram_eigh_s"], 3)
    res["target_met"] = extra <= 2 * res["gram_eigh_s"]
    for key in [k for k in res if k.endswith("_s")]:
        res[key] = round(res[key], 2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
