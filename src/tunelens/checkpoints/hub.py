"""Resolve ``org/name[@revision]`` to a snapshot folder of the local Hugging Face cache, offline.

The cache is the one huggingface_hub writes (``models--org--name/{refs,snapshots,blobs}``): a ref
(a branch or tag such as ``main`` or ``v1.0``, or ``refs/pr/1``) is a file under ``refs/`` holding
a commit hash, and ``snapshots/<commit>/`` holds the repository's files as symlinks into ``blobs/``
(followed like any file). The revision after ``@`` is a ref, a full 40-hex commit, or a unique
prefix (at least 7 hex digits) of a cached commit; without ``@`` it is ``main``.

The cache folder is found as huggingface_hub finds it, read from the environment at call time
(huggingface_hub freezes its constants at import): ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``,
else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.

Nothing here talks to the network: only the cache's folders and ref files are read.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunelens.errors import TunelensError

#: ``org/name`` with an optional ``@revision``; repository ids as the Hub spells them
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[^\s@]+))?")
_HEX = re.compile(r"[0-9a-f]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
MIN_SHORT_COMMIT = 7


@dataclass(frozen=True)
class HubSnapshot:
    """A cached model: its id, the revision asked for, the commit it resolved to, the snapshot folder."""

    repo_id: str
    ref: str
    commit: str
    folder: Path

    def describe(self) -> dict[str, str]:
        return {"hub_id": self.repo_id, "revision": self.commit, "ref": self.ref}  # ``path``: the snapshot


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the environment points at (see the module docstring)."""

    def expand(p: str) -> str:
        return os.path.expandvars(os.path.expanduser(p))

    if os.environ.get("HF_HUB_CACHE"):
        return Path(expand(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(expand(os.environ["HUGGINGFACE_HUB_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = expand(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"))
    return Path(home) / "hub"


def looks_like_hub_id(text: str) -> bool:
    return HUB_ID.fullmatch(text) is not None


def resolve_hub_id(text: str, cache: Path | None = None) -> HubSnapshot:
    """The cached snapshot of ``org/name[@revision]``, or one line saying what is cached instead."""
    m = HUB_ID.fullmatch(text)
    if m is None:
        raise TunelensError(f"{text}: not a Hugging Face model id (org/name or org/name@revision)")
    repo_id, ref = m["repo"], m["rev"] or "main"
    cache = cache or hub_cache_dir()
    repo = cache / _repo_folder(repo_id)
    if not repo.is_dir():
        raise TunelensError(
            f"{text}: no such file or folder, and not in the Hugging Face cache {_nearest(cache, repo_id)}"
        )
    commit = _commit(repo, ref)
    if commit is None:
        commits = _listing(sorted(c[:10] for c in _snapshots(repo)))
        raise TunelensError(
            f"{text}: {repo_id} is in the Hugging Face cache ({repo}) but not at revision {ref!r}; "
            f"cached refs: {_listing(_refs(repo))}; cached commits: {commits}"
        )
    folder = repo / "snapshots" / commit
    if not folder.is_dir():
        raise TunelensError(
            f"{text}: ref {ref!r} of {repo_id} points at commit {commit}, whose snapshot is not in the cache ({repo})"
        )
    return HubSnapshot(repo_id, ref, commit, folder)


def _repo_folder(repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


def _commit(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names: a ref file, a cached full commit, or a unique cached prefix."""
    ref_file = repo / "refs" / ref
    if ref_file.is_file():
        try:
            return ref_file.read_text().strip()
        except OSError as exc:
            raise TunelensError(f"{ref_file}: cannot read ({exc.strerror})") from exc
    snapshots = _snapshots(repo)
    if _COMMIT.fullmatch(ref):
        return ref if ref in snapshots else None
    if len(ref) >= MIN_SHORT_COMMIT and _HEX.fullmatch(ref):
        hits = [c for c in snapshots if c.startswith(ref)]
        if len(hits) > 1:
            raise TunelensError(f"revision {ref} is ambiguous in {repo}: it starts {', '.join(sorted(hits))}")
        return hits[0] if hits else None
    return None


def _refs(repo: Path) -> list[str]:
    root = repo / "refs"
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _snapshots(repo: Path) -> list[str]:
    root = repo / "snapshots"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _listing(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def cached_ids(cache: Path) -> list[str]:
    """Model ids with a folder in ``cache`` (``models--org--name`` → ``org/name``)."""
    if not cache.is_dir():
        return []
    return sorted(p.name[len("models--") :].replace("--", "/") for p in cache.glob("models--*") if p.is_dir())


def _nearest(cache: Path, repo_id: str) -> str:
    if not cache.is_dir():
        return f"({cache} does not exist)"
    ids = cached_ids(cache)
    if not ids:
        return f"({cache} holds no models)"
    by_lower = {i.lower(): i for i in ids}
    near = [by_lower[i] for i in difflib.get_close_matches(repo_id.lower(), list(by_lower), n=3, cutoff=0.4)]
    return f"({cache}; nearest cached: {', '.join(near)})" if near else f"({cache}; cached: {', '.join(ids[:5])})"
