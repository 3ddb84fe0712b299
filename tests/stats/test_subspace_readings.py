"""SSA read honestly: readings come from the ratio and its random-τ spread, never from absolute shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tunelens import api
from tunelens.stats.subspace import aggregate, contrast_sentence, ratio_sentence, readings, verdict
from tunelens.testing import make_tiny, perturb

pytestmark = pytest.mark.usefixtures("single_blas")
NONE = "no evidence of amplification / new directions"


def _plant(base: Path, dst: Path, k: int, where: str) -> Path:
    """τ inside W's top-k singular subspace on both sides (``inside``), in its orthogonal complement
    (``outside``), or isotropic Gaussian (``random``), for every 2-D attention / MLP weight."""
    rng = np.random.default_rng(7)

    def edit(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 2 or "layers." not in name:
            return t
        w = t.double().numpy()
        uf, _, vtf = np.linalg.svd(w, full_matrices=True)
        if where == "inside":
            tau = uf[:, :k] @ rng.standard_normal((k, k)) @ vtf[:k]
        elif where == "outside":
            tau = uf[:, k:] @ rng.standard_normal((w.shape[0] - k, w.shape[1] - k)) @ vtf[k:]
        else:
            tau = rng.standard_normal(w.shape)
        tau *= 0.01 * np.linalg.norm(w) / np.linalg.norm(tau)
        return torch.from_numpy(w + tau)

    return perturb(base, dst, fn=edit)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("readings")
    base = make_tiny("llama", root / "base", seed=4, tokenizer=False)
    models = [f"{w}={_plant(base, root / w, 6, w)}" for w in ("inside", "outside", "random")]
    return api.subspace(base, models, rank=[6], use_cache=False).summary  # type: ignore[no-any-return]


def test_planted_amplified_new_direction_and_random_tau_each_get_the_right_sentence(planted: dict[str, Any]) -> None:
    text = readings(planted)
    assert len(text) == 3 * 3  # attention, MLP and their contrast per model
    by_model = {m: [t for t in text if t.startswith(m)] for m in ("inside", "outside", "random")}
    assert all(t.endswith("— amplification") for t in by_model["inside"][:2]), by_model["inside"]
    assert all(t.endswith("— new directions") for t in by_model["outside"][:2]), by_model["outside"]
    assert all(t.endswith(NONE) for t in by_model["random"][:2]), by_model["random"]
    for m in ("inside", "outside", "random"):
        blocks = next(x for x in planted["models"] if x["name"] == m)["by_criterion"]["rank=6"]["by_group"]
        for g in ("attention", "mlp"):
            mean = blocks[g]["plain_mean"]
            expected = {"inside": "amplification", "outside": "new directions", "random": "no evidence"}[m]
            assert verdict(mean["ratio_left"], mean["ratio_left_null_std"]) == expected
            assert verdict(mean["ratio_both"], mean["ratio_both_null_std"]) == expected
    # no reading draws the paper's conclusion from absolute shares
    assert not any("as in the paper" in t for t in text)


def test_null_std_of_the_aggregate_matches_monte_carlo() -> None:
    """The closed-form spread of a random τ's mean ratio against simulated isotropic τ on fixed W's."""
    rng = np.random.default_rng(3)
    shapes, k = [(24, 40), (40, 24), (32, 32)], 5
    bases = [np.linalg.svd(rng.standard_normal(s), full_matrices=False) for s in shapes]
    means = []
    for _ in range(400):
        rows = []
        for (out, inp), (u, _s, _vt) in zip(shapes, bases, strict=True):
            tau = rng.standard_normal((out, inp))
            share = float(np.sum((u[:, :k].T @ tau) ** 2) / np.sum(tau**2))
            rows.append({"share_left": share, "baseline_left": k / out, "ratio_left": share / (k / out),
                         "share_right": math.nan, "baseline_right": 1.0, "ratio_right": 1.0, "share_both": 0.0,
                         "baseline_both": 1.0, "ratio_both": 0.0, "rows": out, "cols": inp, "k": k, "energy": 1.0,
                         "tau_norm": float(np.linalg.norm(tau))})  # fmt: skip
        means.append(aggregate(rows)["plain_mean"])
    std = means[0]["ratio_left_null_std"]
    assert all(m["ratio_left_null_std"] == std for m in means)
    assert np.std([m["ratio_left"] for m in means]) == pytest.approx(std, rel=0.1)
    assert np.mean([m["ratio_left"] for m in means]) == pytest.approx(1.0, abs=3 * std / 20)


def test_sentences_come_from_ratios() -> None:
    def mean(share: float, base: float, u: float) -> dict[str, float]:
        return {"share_left": share, "baseline_left": base, "ratio_left": share / base, "ratio_left_null_std": u}

    # the paper's absolute shares, with baselines that make both ratios equal: no difference in alignment
    v, up = mean(0.971, 0.971 / 1.5, 0.01), mean(0.281, 0.281 / 1.5, 0.01)
    s = contrast_sentence("aloe", v, up)
    assert "no evidence of a difference" in s and "shape alone accounts for +0.460" in s
    assert "lower in MLP" in contrast_sentence("m", mean(0.6, 0.3, 0.01), mean(0.3, 0.3, 0.01))
    assert "opposite to the paper" in contrast_sentence("m", mean(0.3, 0.3, 0.01), mean(0.6, 0.3, 0.01))
    assert ratio_sentence("m, attention", mean(0.308, 0.3, 0.01)).endswith(NONE)  # ratio 1.027, 3σ = 0.03
    assert ratio_sentence("m, attention", mean(0.31, 0.3, 0.01)).endswith("— amplification")  # ratio 1.033
    assert "slightly more" in ratio_sentence("m, attention", mean(0.315, 0.3, 0.001))
    assert ratio_sentence("m, MLP", mean(0.15, 0.3, 0.01)).endswith("— new directions")
    assert verdict(1.0299, 0.01) == "no evidence" and verdict(1.0301, 0.01) == "amplification"


def test_table4_carries_baseline_ratio_and_spread(
    tiny: Callable[..., Path], tuned: Callable[..., Path], planted: dict[str, Any]
) -> None:
    rows = planted["table4"]["rank=6"]["rows"]
    left = next(r for r in rows if r["model"] == "inside" and r["share"] == "left")
    for key in ("baseline", "ratio", "ratio_null_std"):
        assert set(left[key]) == {"W_Q", "W_K", "W_V", "W_O", "W_gate", "W_up", "W_down"}
    assert left["ratio"]["W_up"] == pytest.approx(left["W_up"] / left["baseline"]["W_up"], rel=1e-9)
    assert left["baseline"]["W_up"] == pytest.approx(6 / 64)
    assert 0 < left["ratio_null_std"]["W_up"] < 1
