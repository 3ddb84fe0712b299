"""Time and peak RSS of ``tunelens diff`` with a GGUF BASE against the same model in safetensors.

Usage: python bench/bench_gguf.py [--root /tmp/tunelens-bench-gguf] [--types Q8_0,Q4_K] [--keep]

Per ggml type, a synthetic Llama-shaped GGUF of >= 1 GB is written with ``gguf.GGUFWriter`` one
tensor at a time: 2-D weights as random, valid blocks of that type (finite f16 scales; gguf has
no K-quant quantizer in Python, so blocks are drawn directly rather than quantized), norms F32.
Its float32 safetensors twin is written by ``tunelens apply GGUF -v GGUF:0`` (λ = 0 copies the
de-quantized base). Then, each from a dropped page cache (root; else warm, and the figures say so):

- ``diff GGUF TWIN``: the GGUF as BASE, the twin as TUNED (τ = 0 on every tensor, checked);
- ``diff TWIN2 TWIN``: the same command with a safetensors BASE (a byte copy of the twin, so both
  runs read the same TUNED files and a base holding the same model).

``--smoke`` uses tiny widths (seconds) to check the script itself.

Figures go to bench/results/gguf.json with the machine's load before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import load, run_child  # noqa: E402
from synthetic import Widths, shapes  # noqa: E402

#: per type, widths giving a GGUF of >= 1 GB (Q4_K stores 4.5 bits per value, Q8_0 8.5)
WIDTHS = {"Q8_0": Widths(layers=16), "Q4_K": Widths(layers=30)}


def random_blocks(n_values: int, qtype: object, rng: np.random.Generator) -> np.ndarray:
    """Random bytes of ``qtype`` blocks with finite f16 scales (d, and dmin for K-quants)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]  # type: ignore[index]
    b = rng.integers(0, 256, size=(n_values // block, size), dtype=np.uint8)
    scale = (rng.random(len(b), dtype=np.float32) * 0.002 + 0.0005).astype(np.float16).view(np.uint8).reshape(-1, 2)
    b[:, 0:2] = scale  # Q8_0 / Q4_0 / Q4_1 / Q4_K / Q5_K: d first
    if qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K):
        b[:, 2:4] = scale  # dmin
    return b


def write_gguf(path: Path, w: Widths, type_name: str, seed: int = 0) -> int:
    """A llama GGUF of widths ``w``, tensors written one at a time; returns its size."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    key = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == "llama")
    tmap = gguf.get_tensor_name_map(key, w.layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bench")
    writer.add_context_length(4096)
    writer.add_embedding_length(w.hidden)
    writer.add_block_count(w.layers)
    writer.add_feed_forward_length(w.intermediate)
    writer.add_head_count(w.heads)
    writer.add_head_count_kv(w.kv_heads)
    writer.add_rope_dimension_count(w.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(w.vocab)
    plan = []
    for name, shape in shapes(w):
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        if len(shape) == 2:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = shape[0] * shape[1] // block * size
            byte_shape = (shape[0], shape[1] // block * size)  # numpy order, bytes per row last
            writer.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        else:
            writer.add_tensor_info(gname, shape, np.dtype(np.float32), shape[0] * 4)
        plan.append(shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for shape in plan:
        if len(shape) == 2:
            data = random_blocks(shape[0] * shape[1], qtype, rng).reshape(shape[0], -1)
        else:
            data = (1.0 + 0.1 * rng.standard_normal(shape[0])).astype(np.float32)
        writer.write_tensor_data(data)
    writer.close()
    return path.stat().st_size


def timed(cmd: list[str]) -> dict[str, object]:
    c = run_child(cmd, cold=True)
    return {
        "wall_s": round(c.wall_s, 2),
        "peak_rss_mb": round(c.peak_rss_bytes / 2**20, 1),
        "cpu_user_s": round(c.cpu_user_s, 1),
        "cpu_sys_s": round(c.cpu_sys_s, 1),
        "cold_cache": c.cold,
        "load_before": c.load_before,
        "load_after": c.load_after,
    }


def tau_zero(out: Path) -> bool:
    summary = json.loads((out / "summary.json").read_text())
    g = summary["models"][0]["global"]
    return bool(g["cosine"] == 1.0 and g["delta_norm"] == 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("/tmp/tunelens-bench-gguf"))
    ap.add_argument("--types", default="Q8_0,Q4_K")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny widths: check the script, not the figures")
    args = ap.parse_args()
    tl = [sys.executable, "-m", "tunelens"]
    results: dict[str, object] = {"load_at_start": load(), "cpus": os.cpu_count()}
    for type_name in args.types.split(","):
        root = args.root / type_name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        w = WIDTHS[type_name] if not args.smoke else Widths(hidden=256, intermediate=512, layers=2, heads=4, vocab=512)
        t0 = time.perf_counter()
        gguf_file = root / f"bench.{type_name}.gguf"
        size = write_gguf(gguf_file, w, type_name)
        twin = root / "twin"
        made = timed([*tl, "apply", str(gguf_file), "-v", f"{gguf_file}:0", "-o", str(twin), "-q"])
        twin2 = root / "twin2"
        shutil.copytree(twin, twin2)
        r: dict[str, object] = {
            "widths": w.__dict__,
            "params": sum(int(np.prod(s)) for _, s in shapes(w)),
            "gguf_bytes": size,
            "safetensors_bytes": sum(f.stat().st_size for f in twin.glob("*.safetensors")),
            "generate_s": round(time.perf_counter() - t0, 1),
            "apply_gguf_base_to_safetensors": made,
        }
        out = root / "out"
        r["diff_gguf_base"] = timed([*tl, "diff", str(gguf_file), str(twin), "-o", str(out / "g"), "-q"])
        r["tau_zero_gguf_vs_twin"] = tau_zero(out / "g")
        r["diff_safetensors_base"] = timed([*tl, "diff", str(twin2), str(twin), "-o", str(out / "s"), "-q"])
        rss_g = r["diff_gguf_base"]["peak_rss_mb"]  # type: ignore[index]
        rss_s = r["diff_safetensors_base"]["peak_rss_mb"]  # type: ignore[index]
        r["rss_ratio_gguf_over_safetensors"] = round(rss_g / rss_s, 3)
        results[type_name] = r
        print(json.dumps({type_name: r}, indent=2), flush=True)
        if not args.keep:
            shutil.rmtree(root)
    dest = Path(__file__).parent / "results"
    dest.mkdir(exist_ok=True)
    (dest / ("gguf-smoke.json" if args.smoke else "gguf.json")).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
