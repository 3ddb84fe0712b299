"""Run metadata every output carries: version, command line, inputs' identity, timing, peak RSS.

``peak_rss_children_bytes`` is the largest finished child process's peak (the workers of
``--executor process``); Ray's workers are not this process's children and are not counted."""

from __future__ import annotations

import platform
import resource
import sys
import time
from typing import Any

from tunelens import __version__


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    """Peak resident set size of this process so far, or with ``RUSAGE_CHILDREN`` of its largest
    finished child (Linux reports KiB)."""
    return int(resource.getrusage(who).ru_maxrss) * 1024


class RunClock:
    """Wall time of one command, from creation to :meth:`metadata`."""

    def __init__(self) -> None:
        self.started = time.time()
        self._t0 = time.perf_counter()

    def metadata(self, inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        import torch

        return {
            "tunelens_version": __version__,
            "command": sys.argv[:],
            "started_unix": self.started,
            "wall_seconds": round(time.perf_counter() - self._t0, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_rss_children_bytes": peak_rss_bytes(resource.RUSAGE_CHILDREN),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "inputs": inputs,
            **extra,
        }
