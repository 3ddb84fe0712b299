"""Output folders (and small files) that appear whole or not at all, and never touch an input.

Everything is written under ``<DIR>.tmp-<pid>`` beside the target and renamed at the end, so an
interrupted run (Ctrl-C, a full disk, a crash) never leaves a folder that looks complete.

Two rules protect what the user already has, checked before anything is written:

- **An output is never an input.** :func:`atomic_dir` and :func:`check_target` take the command's
  inputs (``inputs=``, required: a new command cannot forget them) and refuse an output that *is* an
  input, *contains* one, or lies *inside* one, ``--force`` or not. Both sides are compared as
  written (absolute, normalised) and with every symlink resolved.
- **``--force`` replaces only what tunelens wrote.** Every folder :func:`atomic_dir` writes carries
  :data:`MARKER` (a small JSON file); ``--force`` on an existing folder without it is refused
  (an empty folder excepted). Outputs written before the marker existed have none: remove them by
  hand. A folder written in place over time (a study) gets its marker from :func:`mark_output`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError

#: the file that says "tunelens wrote this folder" (``--force`` replaces only folders that carry it)
MARKER = ".tunelens-output"


def resolve_path(path: Path | str) -> Path:
    """``path`` with every symlink resolved; a symlink loop is one clear line, not a traceback."""
    p = Path(path).expanduser()
    try:
        return p.resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11: RuntimeError("Symlink loop"); 3.13: OSError ELOOP
        raise TunelensError(f"{p}: symlink loop (a link that points back to itself); cannot resolve it") from exc


def _input_path(item: Any) -> Path | None:
    """The filesystem path of one input: a path, a ``name=path`` spec, or an object with ``.path``."""
    if item is None:
        return None
    path = getattr(item, "path", None)
    if isinstance(path, Path | str):
        return Path(path)
    if isinstance(item, Path):
        return item
    if isinstance(item, str):
        from tunelens.checkpoints.index import split_spec

        return split_spec(item)[1]
    return None


def _forms(p: Path) -> set[Path]:
    """How a path may be reached: as written (absolute, ``..`` folded) and with symlinks resolved."""
    written = Path(os.path.abspath(p.expanduser()))
    return {written, resolve_path(p)}


def _is_model_folder(p: Path) -> bool:
    """A model, vector, adapter or tunelens output folder: nothing may be written inside it."""
    names = ("config.json", "adapter_config.json", "model.safetensors.index.json", MARKER)
    return p.is_dir() and (any((p / n).exists() for n in names) or any(p.glob("*.safetensors")))


def check_inputs(path: Path | str, inputs: Iterable[Any]) -> None:
    """Refuse an output ``path`` that is or contains one of ``inputs``, or lies inside an input model,
    vector, adapter or tunelens output folder (a data folder may hold outputs: ``--corpus .``)."""
    out = _forms(Path(path))
    for item in inputs:
        ip = _input_path(item)
        if ip is None:
            continue
        for i in _forms(ip):
            for o in out:
                if o == i:
                    raise TunelensError(f"output {path} is the input {ip}; write the output somewhere else")
                if i.is_relative_to(o):
                    raise TunelensError(
                        f"output {path} contains the input {ip}; writing there would replace it, "
                        "write the output somewhere else"
                    )
                if o.is_relative_to(i) and _is_model_folder(ip):
                    raise TunelensError(
                        f"output {path} lies inside the input {ip}; write the output outside every input"
                    )


def is_tunelens_output(path: Path) -> bool:
    """Whether ``path`` is a folder tunelens wrote (it carries :data:`MARKER`)."""
    return (Path(path) / MARKER).is_file()


def check_target(path: Path | str, force: bool, *, inputs: Iterable[Any]) -> None:
    """Refuse, before any work starts, an output that is or holds an input, or that exists unless
    ``force`` and tunelens wrote it."""
    path = Path(path)
    check_inputs(path, inputs)
    if not path.exists():
        return
    if not force:
        raise TunelensError(f"{path} already exists; pass --force to replace it")
    if not path.is_dir():
        raise TunelensError(f"{path} exists and is not a folder")
    try:
        holds = any(path.iterdir())
    except OSError as exc:
        raise TunelensError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if holds and not is_tunelens_output(path):
        raise TunelensError(
            f"{path} was not written by tunelens (no {MARKER} marker), so --force will not replace it; "
            "remove it yourself or choose another output"
        )


def marker_text(kind: str = "folder") -> str:
    """The marker's content: who wrote the folder (no time or command line, so that a deterministic output
    stays byte-identical run to run; the outputs' own metadata records those)."""
    from tunelens import __version__

    info = {
        "written_by": "tunelens",
        "tunelens_version": __version__,
        "kind": kind,
        "note": "tunelens --force replaces a folder only when it carries this file",
    }
    return json.dumps(info, indent=1) + "\n"


def mark_output(path: Path, kind: str = "folder") -> None:
    """Mark a folder written in place (a study) as tunelens's own, so ``--force`` may replace it."""
    if not (Path(path) / MARKER).exists():
        write_text_atomic(Path(path) / MARKER, marker_text(kind))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name beside it and one rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TunelensError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _failed(path: Path, exc: OSError) -> TunelensError:
    if exc.errno == errno.ENOSPC:
        return TunelensError(f"no space left on device while writing {path}; nothing was written")
    return TunelensError(f"writing {path} failed: {exc.strerror or exc}; nothing was written")


@contextmanager
def atomic_dir(path: Path | str, *, inputs: Iterable[Any], force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``path`` (with :data:`MARKER`), on any failure it
    is removed. ``inputs`` are the command's inputs (paths, specs or checkpoints; see the module doc)."""
    path = Path(path)
    if path.is_symlink():  # write where the link points, never replace the link itself
        path = resolve_path(path)
    check_target(path, force, inputs=list(inputs))
    parent = path.parent
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise TunelensError(f"cannot write in {parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        (tmp / MARKER).write_text(marker_text())
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _failed(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, path, force)


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``path``; an existing ``path`` is replaced only with ``force``.

    Without ``force`` the rename itself refuses a folder that appeared meanwhile (another run onto the
    same output): the earlier result stays, this one is discarded, and the user is told so.
    """
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    appeared = (
        f"{path} appeared while this run was writing it (another run?); it was left as it is and this "
        "run's result discarded"
    )
    try:
        if path.exists():
            if not force:
                raise TunelensError(f"{appeared}: pass --force to replace it")
            check_target(path, force, inputs=())
            try:
                path.rename(old)
            except OSError as exc:
                raise _failed(path, exc) from exc
        try:
            tmp.rename(path)
        except OSError as exc:
            if old.exists() and not path.exists():
                old.rename(path)  # put the previous output back
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TunelensError(appeared) from exc
            raise _failed(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
