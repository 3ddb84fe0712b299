"""The one exception type the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations


class TunelensError(Exception):
    """Bad input or an impossible request, explained in one line for the user.

    Raised anywhere in the library; ``tunelens.cli`` prints ``error: <message>`` and exits with
    :attr:`exit_code`. Bugs are not ``TunelensError`` and keep their tracebacks.
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
