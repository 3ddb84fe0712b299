"""Benchmark ``tunelens apply`` on a synthetic ~1.2B-parameter bf16 Llama pair against its peers.

Runs, in one process tree and on the same inputs:

- the read+write floor: ``cat`` of the inputs to /dev/null, then one large sequential write of the
  output's size, fsync'd;
- ``tunelens apply BASE -v FT:-1`` (one vector) and ``-v FT1 -v FT2 -v FT3 --mean`` (three);
- mergekit ``task_arithmetic`` (same λ, float32 compute, bf16 output), one vector;
- a naive transformers load-edit-save (two models loaded, ``p -= (ft - p)``, ``save_pretrained``);
- the writer alone: ``ShardedWriter`` vs ``safetensors.torch.save_file`` on the same tensors.

Every timed step ends with ``sync`` (dirty pages flushed) and, when the kernel allows it, starts
with the page cache dropped (``echo 3 > /proc/sys/vm/drop_caches``): "cold" inputs. Peak RSS is each
child's ``ru_maxrss`` from ``wait4``. Results go to ``bench/results/apply.json`` and a Markdown table
on stdout. The synthetic models live under a temporary folder that is deleted at the end.

Usage: ``nice python bench/bench_apply.py [--layers 16] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def llama_config(layers: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "rope_theta": 10000.0,
    }  # fmt: skip


def shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        out += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        out += [
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def build(folder: Path, cfg: dict[str, Any], seed: int, base: Path | None) -> Path:
    """A bf16 model (``base`` None) or a fine-tune = base + 1e-3·N(0,1)·rms, written with ShardedWriter."""
    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.checkpoints.stream import TensorReader

    folder.mkdir(parents=True)
    spec = shapes(cfg)
    plan = [PlannedTensor(n, s, "BF16") for n, s in spec]
    gen = torch.Generator().manual_seed(seed)
    ck = open_checkpoint(base) if base else None
    with TensorReader() as reader, ShardedWriter(folder, plan, max_shard_bytes=2 * 10**9) as w:
        for name, shape in spec:
            if ck is None:
                t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02
            else:
                t = reader.read_float(ck.tensors[name])
                t += torch.randn(shape, generator=gen) * (1e-3 * float(t.pow(2).mean().sqrt()))
            w.write(name, t.to(torch.bfloat16))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], cold: bool, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall time (command + sync) and the child's peak RSS."""
    dropped = drop_caches() if cold else False
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    return {"seconds": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2), "cold": dropped}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


FLOOR_WRITE = """
import os, sys
n, path = int(sys.argv[1]), sys.argv[2]
buf = bytearray(256 * 2**20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
done = 0
while done < n:
    done += os.write(fd, memoryview(buf)[: min(len(buf), n - done)])
os.fsync(fd); os.close(fd)
"""

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
base, ft, out = sys.argv[1:4]
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
f = AutoModelForCausalLM.from_pretrained(ft, dtype=torch.bfloat16)
fp = dict(f.named_parameters())
with torch.no_grad():
    for n, p in m.named_parameters():
        p.copy_((p.float() - (fp[n].float() - p.float())).to(p.dtype))
del f, fp
m.save_pretrained(out)
"""

WRITER = """
import sys, time, os, subprocess, torch
from safetensors.torch import save_file
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter
out, which, gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = int(gb * 1e9 / 2 / (8192 * 2048))
ts = {f"t{i}": torch.randn(8192, 2048).to(torch.bfloat16) for i in range(n)}
subprocess.run(["sync"]); t0 = time.perf_counter()
if which == "sharded":
    plan = [PlannedTensor(k, tuple(v.shape), "BF16") for k, v in ts.items()]
    with ShardedWriter(__import__("pathlib").Path(out), plan) as w:
        for k, v in ts.items():
            w.write(k, v)
else:
    save_file(ts, os.path.join(out, "model.safetensors"))
subprocess.run(["sync"]); dt = time.perf_counter() - t0
print(f"{dt:.3f} {n * 8192 * 2048 * 2}")
"""


def writer_bench(tmp: Path, gb: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for which in ("sharded", "save_file"):
        out = tmp / f"w-{which}"
        out.mkdir()
        text = subprocess.run([sys.executable, "-c", WRITER, str(out), which, str(gb)], check=True,
                              capture_output=True, text=True).stdout.split()  # fmt: skip
        dt, n = float(text[0]), int(text[1])
        res[which] = {"seconds": round(dt, 2), "gb_per_s": round(n / dt / 1e9, 2), "bytes": n}
        shutil.rmtree(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic models (for reruns).")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="Steps to skip: mergekit naive three writer")
    args = ap.parse_args()
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="tl-bench-apply-", dir="/tmp"))
    tmp.mkdir(exist_ok=True)
    cfg = llama_config(args.layers)
    results: dict[str, Any] = {"machine": "shared 2-core VM, 24 GiB RAM; other engineers' jobs may overlap"}
    try:
        t0 = time.perf_counter()
        base = tmp / "base" if (tmp / "base").exists() else build(tmp / "base", cfg, 0, None)
        fts = [tmp / f"ft{i}" if (tmp / f"ft{i}").exists() else build(tmp / f"ft{i}", cfg, i, base) for i in (1, 2, 3)]
        results["build_seconds"] = round(time.perf_counter() - t0, 1)
        size = folder_bytes(base)
        results["model_bytes"] = size
        results["params"] = size // 2
        floor_r = timed(["sh", "-c", f"cat {base}/*.safetensors {fts[0]}/*.safetensors > /dev/null"], cold=True)
        floor_w = timed([sys.executable, "-c", FLOOR_WRITE, str(size), str(tmp / "floor.bin")], cold=False)
        (tmp / "floor.bin").unlink()
        floor = floor_r["seconds"] + floor_w["seconds"]
        results["floor"] = {"read_2_models": floor_r, "write_1_model": floor_w, "seconds": round(floor, 2)}
        tl = [str(BIN / "tunelens"), "apply", str(base), "-q"]
        runs: dict[str, dict[str, Any]] = {}
        runs["tunelens apply, 1 vector"] = timed([*tl, "-v", f"{fts[0]}:-1", "-o", str(tmp / "o1")], cold=True)
        if "three" not in args.skip:
            three = [x for f in fts for x in ("-v", str(f))]
            runs["tunelens apply, 3 vectors (--mean)"] = timed(
                [*tl, *three, "--mean", "-o", str(tmp / "o3")], cold=True
            )
            shutil.rmtree(tmp / "o3")
        if "mergekit" not in args.skip and (BIN / "mergekit-yaml").exists():
            (tmp / "mk.yml").write_text(
                f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n"
                "    parameters: {weight: -1.0}\nparameters: {normalize: false}\ndtype: float32\nout_dtype: bfloat16\n"
            )
            runs["mergekit task_arithmetic, 1 vector"] = timed(
                [str(BIN / "mergekit-yaml"), str(tmp / "mk.yml"), str(tmp / "mk"), "--quiet"], cold=True
            )
            runs["mergekit task_arithmetic, 1 vector"]["max_abs_diff_vs_tunelens"] = _max_diff(tmp / "o1", tmp / "mk")
            shutil.rmtree(tmp / "mk")
        if "naive" not in args.skip:
            runs["transformers load-edit-save, 1 vector"] = timed(
                [sys.executable, "-c", NAIVE, str(base), str(fts[0]), str(tmp / "naive")], cold=True
            )
            shutil.rmtree(tmp / "naive")
        shutil.rmtree(tmp / "o1")
        for r in runs.values():
            r["x_floor"] = round(r["seconds"] / floor, 2)
        results["runs"] = runs
        if "writer" not in args.skip:
            results["writer"] = writer_bench(tmp, size / 1e9)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "apply.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print("\n| run | seconds | × floor | peak RSS (GB) |\n|---|---|---|---|")
    print(f"| read+write floor | {results['floor']['seconds']} | 1.00 | |")
    for name, r in results["runs"].items():
        print(f"| {name} | {r['seconds']} | {r['x_floor']} | {r['peak_rss_gb']} |")


def _max_diff(a: Path, b: Path) -> float:
    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.checkpoints.stream import TensorReader

    ca, cb = open_checkpoint(a), open_checkpoint(b)
    worst = 0.0
    with TensorReader() as r:
        for name in list(ca.tensors)[:40]:
            worst = max(worst, float((r.read_float(ca.tensors[name]) - r.read_float(cb.tensors[name])).abs().max()))
    return worst


if __name__ == "__main__":
    main()
