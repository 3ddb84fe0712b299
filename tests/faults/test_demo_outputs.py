"""``tunelens demo`` never writes into (or over) the zoo it studies (slow: builds the tiny zoo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunelens.zoo import ZooSpec, build


@pytest.mark.slow
def test_demo_output_never_touches_the_zoo(tmp_path: Path, fault: Any) -> None:
    cache = tmp_path / "zoo"
    zoo = build(ZooSpec.tiny(), cache, quiet=True)
    parts = [zoo.base, *zoo.tuned.values()]
    common = ["demo", "--tiny", "--cache-dir", cache, "-q"]
    fault([*common, "-o", zoo.base / "study"], inputs=parts, match="lies inside the input")
    fault([*common, "-o", cache, "--force"], inputs=parts, match="contains the input")
    fault([*common, "-o", zoo.root, "--resume"], inputs=parts, match="contains the input")
