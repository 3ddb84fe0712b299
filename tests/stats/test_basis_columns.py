"""A Gram basis asked for k columns forms only those of its larger side, equal to the full basis' first k;
a cached entry with too few columns is decomposed again, never used short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunelens.stats.subspace import PassStats, load_or_build
from tunelens.stats.subspace_basis import BasisCache, BasisKey, decompose


@pytest.mark.parametrize("shape", [(96, 200), (200, 96)])
def test_columns_equal_the_full_basis(shape: tuple[int, int]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    full = decompose(w, "gram")
    part = decompose(w, "gram", columns=lambda s: 7)
    assert part.cols == 7 and full.cols == full.trusted == min(shape)
    assert torch.equal(part.S, full.S)
    torch.testing.assert_close(part.U[:, :7], full.U[:, :7], rtol=0, atol=1e-6)
    torch.testing.assert_close(part.V[:, :7], full.V[:, :7], rtol=0, atol=1e-6)
    u, _, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    # each singular vector up to sign: |<ours, numpy's>| = 1
    for i in range(7):
        assert abs(float(part.U[:, i].double() @ torch.from_numpy(u[:, i]))) == pytest.approx(1.0, abs=1e-6)
        assert abs(float(part.V[:, i].double() @ torch.from_numpy(vh[i]))) == pytest.approx(1.0, abs=1e-6)


def test_cache_with_too_few_columns_is_rebuilt(tmp_path: Path) -> None:
    w = torch.randn(64, 150, generator=torch.Generator().manual_seed(2))
    cache = BasisCache(tmp_path)
    key = BasisKey("abc", "F32:[64, 150]", "-:out_in", "whole", "gram")
    stats = PassStats()
    few = load_or_build([w], key, cache, "gram", stats, "t", lambda s: 5)
    assert few[0].cols == 5 and stats.misses == 1
    again = load_or_build([w], key, cache, "gram", stats, "t", lambda s: 3)
    assert again[0].cols == 5 and stats.hits == 1  # enough columns cached
    more = load_or_build([w], key, cache, "gram", stats, "t", lambda s: 20)
    assert more[0].cols == 20 and stats.misses == 2  # decomposed again, with the columns asked for
    assert load_or_build([w], key, cache, "gram", stats, "t", lambda s: 20)[0].cols == 20 and stats.hits == 2
