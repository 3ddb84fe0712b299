"""The tiny zoo, built once per session for every zoo test."""

from __future__ import annotations

import pytest

from tunelens.zoo import Zoo, ZooSpec, build


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build(ZooSpec.tiny(), tmp_path_factory.mktemp("zoo"), quiet=True)
