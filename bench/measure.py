"""What every bench measures about a child command: wall time, peak RSS, CPU, cache state, load."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def load() -> list[float]:
    """1, 5 and 15-minute load averages (the benches run on shared 2-core machines: always record them)."""
    return [round(x, 2) for x in os.getloadavg()]


def drop_caches() -> bool:
    """Sync and drop the page cache (root only) so the next read is cold; False when not allowed."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Child:
    wall_s: float
    peak_rss_bytes: int  # the command's own peak RSS (GNU time's %M; os.wait4's ru_maxrss without it)
    cpu_user_s: float
    cpu_sys_s: float
    cold: bool
    load_before: list[float]
    load_after: list[float]


def run_child(cmd: list[str], *, cold: bool = False, sync: bool = False) -> Child:
    """Run ``cmd`` (optionally from a dropped page cache; with ``sync``, the wall time includes flushing
    its writes); stop with the tail of its stderr when it fails."""
    dropped = drop_caches() if cold else False
    before = load()
    # Linux carries the parent's memory high-water mark into a forked child's ru_maxrss (it survives
    # exec), so a bench process holding 1 GB would report >= 1 GB for `cat`. GNU time is a small
    # process: the command it forks reports its own peak, which time writes to a file.
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if os.path.exists(GNU_TIME) else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if sync:
            subprocess.run(["sync"], check=True)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-3000:]}")
        text = rss.read().strip().splitlines()
        peak = int(text[-1]) * 1024 if wrapped is not cmd and text else usage.ru_maxrss * 1024
    return Child(wall, peak, usage.ru_utime, usage.ru_stime, dropped, before, load())
