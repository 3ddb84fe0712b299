"""Time ``tunelens diff`` on a synthetic ~1B bf16 pair against the cold read floor, with peak RSS.

Usage: python bench/bench_diff.py [--root /tmp/tunelens-bench] [--keep] [--tuned 1]

The read floor is ``cat`` of the same files into /dev/null after dropping the page cache
(``echo 3 > /proc/sys/vm/drop_caches``, needs root; when that is refused the figures are warm and
say so). Each command runs in a fresh process; peak RSS is the child's ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_child  # noqa: E402
from synthetic import ONE_B, make_pair  # noqa: E402


def timed(cmd: list[str], cold: bool) -> dict[str, float | bool]:
    """Wall time and this child's own peak RSS (``os.wait4`` rusage), optionally from a cold cache."""
    c = run_child(cmd, cold=cold)
    return {"wall_s": round(c.wall_s, 3), "peak_rss_mb": round(c.peak_rss_bytes / 2**20, 1), "cold": c.cold}


def files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*.safetensors"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("/tmp/tunelens-bench"))
    ap.add_argument("--tuned", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    base, tuned = make_pair(args.root, ONE_B, n_tuned=args.tuned)
    gen_s = time.perf_counter() - t0
    inputs = files(base) + [f for t in tuned for f in files(t)]
    nbytes = sum(Path(f).stat().st_size for f in inputs)
    out = args.root / "out"
    tl = [sys.executable, "-m", "tunelens", "diff", str(base), *map(str, tuned), "-o", str(out), "-q", "--force"]
    results: dict[str, object] = {"bytes_read": nbytes, "params_per_model": nbytes // 2 // (1 + args.tuned)}
    results["generate_s"] = round(gen_s, 1)
    results["read_floor_cold"] = timed(["cat", *inputs], cold=True)
    results["diff_cold"] = timed(tl, cold=True)
    results["read_floor_warm"] = timed(["cat", *inputs], cold=False)
    results["diff_warm"] = timed(tl, cold=False)
    floor = results["read_floor_cold"]["wall_s"]  # type: ignore[index]
    results["ratio_cold"] = round(results["diff_cold"]["wall_s"] / floor, 2)  # type: ignore[index]
    results["read_floor_GBps"] = round(nbytes / floor / 1e9, 2)
    results["summary_wall_s"] = json.loads((out / "summary.json").read_text())["wall_seconds"]
    dest = Path(__file__).parent / "results"
    dest.mkdir(exist_ok=True)
    (dest / "diff.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(args.root)


if __name__ == "__main__":
    main()
