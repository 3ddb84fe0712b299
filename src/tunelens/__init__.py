"""tunelens: what domain fine-tuning does to a large language model.

Only the version lives here, so that ``import tunelens.cli`` stays free of torch; ``tunelens.load``
(any output folder as pandas DataFrames, :mod:`tunelens.frames`) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelens.frames import load

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    """``tunelens.load`` without importing pandas at ``import tunelens``."""
    if name == "load":
        from tunelens.frames import load

        return load
    raise AttributeError(f"module 'tunelens' has no attribute {name!r}")
