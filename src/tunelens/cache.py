"""Where tunelens keeps what it builds once and reuses: the demo zoo, converted models, SSA bases."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TUNELENS_CACHE"


def cache_root() -> Path:
    """``$TUNELENS_CACHE``, else ``$XDG_CACHE_HOME/tunelens``, else ``~/.cache/tunelens``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tunelens"
