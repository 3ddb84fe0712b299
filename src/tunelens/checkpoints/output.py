"""Output folders (and small files) that appear whole or not at all.

Everything is written under ``<DIR>.tmp-<pid>`` beside the target and renamed at the end, so an
interrupted run (Ctrl-C, a full disk, a crash) never leaves a folder that looks complete. An
existing target is refused unless ``force``; with ``force`` it is replaced only after the new one
is complete.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelens.errors import TunelensError


def check_target(path: Path, force: bool) -> None:
    """Refuse an existing output before any heavy work starts."""
    if path.exists() and not force:
        raise TunelensError(f"{path} already exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise TunelensError(f"{path} exists and is not a folder")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name beside it and one rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``path``, on any failure it is removed."""
    path = Path(path)
    check_target(path, force)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelensError(f"cannot create {parent}: {exc.strerror}") from exc
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise TunelensError(f"no space left on device while writing {path}; nothing was written") from exc
        raise TunelensError(f"writing {path} failed: {exc.strerror or exc}; nothing was written") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
