"""Benchmark ``tunelens apply`` on the synthetic ~1B bf16 Llama pair (bench/synthetic.py) against its peers.

Runs, on the same inputs and one after the other:

- the read+write floor: ``cat`` of the inputs to /dev/null (cold), then one large sequential write
  of the output's size, fsync'd; measured right before each tunelens run (``--repeat`` pairs);
- ``tunelens apply BASE -v FT0:-1`` (one vector) and ``-v FT0 -v FT1 -v FT2 --mean`` (three), each
  against its own floor (2 or 4 models read, 1 written);
- mergekit ``task_arithmetic`` (weight -1, ``normalize: false``, float32 compute, bf16 output), one
  vector, default options; its output is compared with tunelens' on every tensor;
- a naive transformers load-edit-save (base and fine-tune loaded in bf16, ``p -= (ft - p)`` in
  float32, ``save_pretrained``);
- the writer alone: ``ShardedWriter`` (pwrite at planned offsets) vs ``safetensors.torch.save_file``
  on the same ~model-sized set of tensors.

Every timed step ends with ``sync`` (dirty pages flushed) and, when the kernel allows it (root),
starts with the page cache dropped (``echo 3 > /proc/sys/vm/drop_caches``): cold inputs. Peak RSS
is each child's ``ru_maxrss`` from ``wait4``, with its user and system CPU seconds (less
sensitive than wall time to other jobs on a shared machine). ``uptime``'s load averages are recorded before every
step, since this machine is shared. Results go to ``bench/results/apply.json`` and a Markdown
table on stdout.

Usage: ``python bench/bench_apply.py [--root /tmp/tl-bench-apply] [--keep] [--repeat N]
[--skip mergekit naive three writer]``
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
from measure import load, run_child  # noqa: E402
from synthetic import ONE_B, make_pair  # noqa: E402

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cold: bool) -> dict[str, Any]:
    """Wall time (command + sync), the child's peak RSS and the load averages before it started."""
    c = run_child(cmd, cold=cold, sync=True)
    return {
        "seconds": round(c.wall_s, 2),
        "peak_rss_gb": round(c.peak_rss_bytes / 1e9, 2),
        "cpu_user_s": round(c.cpu_user_s, 2),
        "cpu_sys_s": round(c.cpu_sys_s, 2),
        "cold": c.cold,
        "load_before": c.load_before,
    }


def shards(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*.safetensors"))]


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
from pathlib import Path
from safetensors.torch import save_file
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter
out, which, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = max(1, nbytes // 2 // (8192 * 2048))
ts = {f"t{i}": torch.randn(8192, 2048).to(torch.bfloat16) for i in range(n)}
subprocess.run(["sync"]); t0 = time.perf_counter()
if which == "ShardedWriter":
    plan = [PlannedTensor(k, tuple(v.shape), "BF16") for k, v in ts.items()]
    with ShardedWriter(Path(out), plan) as w:
        for k, v in ts.items():
            w.write(k, v)
else:
    save_file(ts, os.path.join(out, "model.safetensors"))
subprocess.run(["sync"]); dt = time.perf_counter() - t0
print(f"{dt:.3f} {n * 8192 * 2048 * 2}")
"""


def writer_bench(tmp: Path, nbytes: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for which in ("ShardedWriter", "save_file"):
        out = tmp / f"w-{which}"
        out.mkdir()
        before = load()
        text = subprocess.run([sys.executable, "-c", WRITER, str(out), which, str(nbytes)], check=True,
                              capture_output=True, text=True).stdout.split()  # fmt: skip
        dt, n = float(text[0]), int(text[1])
        res[which] = {"seconds": round(dt, 2), "gb_per_s": round(n / dt / 1e9, 2), "bytes": n, "load_before": before}
        shutil.rmtree(out)
    return res


def floor(inputs: list[Path], out_bytes: int, tmp: Path) -> dict[str, Any]:
    read = timed(["cat", *[f for p in inputs for f in shards(p)]], cold=True)
    write = timed([sys.executable, "-c", FLOOR_WRITE, str(out_bytes), str(tmp / "floor.bin")], cold=False)
    (tmp / "floor.bin").unlink()
    nread = sum(folder_bytes(p) for p in inputs)
    return {
        "read": {**read, "bytes": nread, "gb_per_s": round(nread / read["seconds"] / 1e9, 2)},
        "write": {**write, "bytes": out_bytes, "gb_per_s": round(out_bytes / write["seconds"] / 1e9, 2)},
        "seconds": round(read["seconds"] + write["seconds"], 2),
    }


def max_abs_diff(a: Path, b: Path) -> dict[str, Any]:
    """Largest |a − b| over every tensor of two checkpoints, and how many tensors differ at all."""
    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.checkpoints.stream import TensorReader

    ca, cb = open_checkpoint(a), open_checkpoint(b)
    worst, differ = 0.0, 0
    with TensorReader() as r:
        for name, info in ca.tensors.items():
            d = (r.read_float(info) - r.read_float(cb.tensors[name])).abs().max()
            worst = max(worst, float(d))
            differ += bool(d > 0)
    return {"max_abs_diff": worst, "tensors_differing": differ, "tensors": len(ca.tensors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/tl-bench-apply"))
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic models (for reruns).")
    ap.add_argument("--skip", nargs="*", default=[], help="Steps to skip: mergekit naive three writer")
    ap.add_argument("--repeat", type=int, default=1, help="Repeat the floor + tunelens runs (each pair in turn).")
    args = ap.parse_args()
    tmp: Path = args.root
    tmp.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    import mergekit  # noqa: F401  (version only)

    results: dict[str, Any] = {
        "machine": "shared VM, 2 cores, 24 GiB RAM, no GPU; other sessions' jobs run concurrently "
        "(see load_before: 1-minute, 5-minute, 15-minute load averages before each step)",
        "versions": {p: version(p) for p in ("torch", "safetensors", "transformers", "mergekit")},
        "model": {"widths": ONE_B.__dict__, "dtype": "bfloat16"},
    }
    try:
        t0 = time.perf_counter()
        base, fts = make_pair(tmp, ONE_B, n_tuned=1 if "three" in args.skip else 3)
        results["build_seconds"] = round(time.perf_counter() - t0, 1)
        size = folder_bytes(base)
        results["model"].update(bytes=size, params=size // 2)
        floors: dict[str, dict[str, Any]] = {}
        runs: dict[str, dict[str, Any]] = {}
        tl = [str(BIN / "tunelens"), "apply", str(base), "-q"]
        for rep in range(args.repeat):
            # each run right after its own floor, so that both see about the same machine load
            tag = "" if rep == 0 else f" (rep {rep + 1})"
            floors["1 vector" + tag] = floor([base, fts[0]], size, tmp)
            name = "tunelens apply, 1 vector" + tag
            shutil.rmtree(tmp / "o1", ignore_errors=True)
            runs[name] = {
                **timed([*tl, "-v", f"{fts[0]}:-1", "-o", str(tmp / "o1")], cold=True),
                "floor": "1 vector" + tag,
            }
            runs[name]["reported_wall_seconds"] = json.loads((tmp / "o1" / "tunelens.json").read_text())["wall_seconds"]
            if "three" not in args.skip:
                floors["3 vectors" + tag] = floor([base, *fts], size, tmp)
                three = [x for f in fts for x in ("-v", str(f))]
                runs["tunelens apply, 3 vectors (--mean)" + tag] = {
                    **timed([*tl, *three, "--mean", "-o", str(tmp / "o3")], cold=True),
                    "floor": "3 vectors" + tag,
                }
                shutil.rmtree(tmp / "o3")
        results["floor"] = floors
        if "mergekit" not in args.skip:
            (tmp / "mk.yml").write_text(
                f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {fts[0]}\n"
                "    parameters: {weight: -1.0}\nparameters: {normalize: false}\ndtype: float32\nout_dtype: bfloat16\n"
            )
            mk = runs["mergekit task_arithmetic, 1 vector"] = {
                **timed([str(BIN / "mergekit-yaml"), str(tmp / "mk.yml"), str(tmp / "mk"), "--quiet"], cold=True),
                "floor": "1 vector",
            }
            mk["vs_tunelens"] = max_abs_diff(tmp / "o1", tmp / "mk")
            shutil.rmtree(tmp / "mk")
        if "naive" not in args.skip:
            runs["transformers load-edit-save, 1 vector"] = {
                **timed([sys.executable, "-c", NAIVE, str(base), str(fts[0]), str(tmp / "naive")], cold=True),
                "floor": "1 vector",
            }
            shutil.rmtree(tmp / "naive")
        shutil.rmtree(tmp / "o1")
        for r in runs.values():
            r["x_floor"] = round(r["seconds"] / floors[r["floor"]]["seconds"], 2)
        results["runs"] = runs
        if "writer" not in args.skip:
            results["writer"] = writer_bench(tmp, size)
        results["load_after"] = load()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    dest = ROOT / "results"
    dest.mkdir(exist_ok=True)
    (dest / "apply.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print("\n| run | seconds | floor (s) | × floor | CPU user+sys (s) | peak RSS (GB) | load before |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["runs"].items():
        f = floors[r["floor"]]["seconds"]
        cpu = f"{r['cpu_user_s']} + {r['cpu_sys_s']}"
        print(f"| {name} | {r['seconds']} | {f} | {r['x_floor']} | {cpu} | {r['peak_rss_gb']} | {r['load_before']} |")


if __name__ == "__main__":
    main()
