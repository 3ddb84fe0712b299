"""``diff`` numbers against a naive in-memory float64 computation on tiny models of every family."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pytest
import torch

from tunelens import api
from tunelens.checkpoints.index import open_checkpoint
from tunelens.config import Selection
from tunelens.testing import FAMILIES, perturb, read_state


def _naive_groups(base: Path, tuned: list[Path], family: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per model: group → (cosine, relative change, 1-cos) from whole float64 tensors."""
    b = {k: v.double() for k, v in read_state(base).items()}
    ck = open_checkpoint(base)
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for t in tuned:
        s = {k: v.double() for k, v in read_state(t).items()}
        acc: dict[str, list[float]] = {}
        for name, w in b.items():
            if ck.arch.tie_word_embeddings and ck.arch.parse(name)[1] == "lm_head":
                continue
            for part in ck.arch.parts(name, tuple(w.shape)):
                wa = w if part.dim is None else w.narrow(part.dim, part.start, part.stop - part.start)
                wb = s[name] if part.dim is None else s[name].narrow(part.dim, part.start, part.stop - part.start)
                for key in ("all", part.component):
                    a = acc.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                    a[0] += float((wa * wb).sum())
                    a[1] += float((wa * wa).sum())
                    a[2] += float((wb * wb).sum())
                    a[3] += float(((wb - wa) ** 2).sum())
        out[t.name] = {
            k: (v[0] / math.sqrt(v[1] * v[2]), math.sqrt(v[3] / v[1]), 1 - v[0] / math.sqrt(v[1] * v[2]))
            if v[1] > 0 and v[2] > 0
            else (math.nan, math.nan, math.nan)
            for k, v in acc.items()
        }
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_diff_matches_naive_float64(family: str, tiny, tuned) -> None:
    base = tiny(family)
    fts = [tuned(base, scale=3e-2, seed=1), tuned(base, scale=3e-2, seed=2)]
    result = api.diff(base, fts, options=api.ReadOptions(quiet=True))
    ref = _naive_groups(base, fts, family)
    for m in result.summary["models"]:
        r = ref[Path(m["path"]).name]
        cos, rel, omc = r["all"]
        assert m["global"]["cosine"] == pytest.approx(cos, abs=1e-10)
        assert m["global"]["relative_change"] == pytest.approx(rel, rel=1e-6)
        assert m["global"]["one_minus_cosine"] == pytest.approx(omc, rel=1e-6)
        for comp, g in m["by_component"].items():
            if math.isnan(r[comp][0]):  # zero-norm base group (Gemma norms start at 0): undefined
                assert math.isnan(g["cosine"]) and math.isnan(g["one_minus_cosine"]), comp
                continue
            # float32 checkpoints: tau is rounded to float32 (DESIGN.md), so 1-cos carries ~1e-8 relative error
            assert g["cosine"] == pytest.approx(r[comp][0], abs=1e-10), comp
            assert g["one_minus_cosine"] == pytest.approx(r[comp][2], rel=1e-6), comp
            assert g["relative_change"] == pytest.approx(r[comp][1], rel=1e-6), comp


def test_fused_parts_are_split(tiny) -> None:
    base = tiny("phi3")
    ck = open_checkpoint(base)
    parts = ck.arch.parts("model.layers.0.self_attn.qkv_proj.weight", (64, 32))
    assert [(p.component, p.start, p.stop) for p in parts] == [("q", 0, 32), ("k", 32, 48), ("v", 48, 64)]
    parts = ck.arch.parts("model.layers.0.mlp.gate_up_proj.weight", (128, 32))
    assert [(p.component, p.start, p.stop) for p in parts] == [("gate", 0, 64), ("up", 64, 128)]
    gpt = open_checkpoint(tiny("gpt2"))
    parts = gpt.arch.parts("transformer.h.0.attn.c_attn.weight", (32, 96))
    assert [(p.component, p.dim, p.start, p.stop, p.layout) for p in parts] == [
        ("q", 1, 0, 32, "in_out"),
        ("k", 1, 32, 64, "in_out"),
        ("v", 1, 64, 96, "in_out"),
    ]


def test_planted_change_shows_only_there(tiny, tmp_path) -> None:
    base = tiny("llama")
    target = "model.layers.1.mlp.up_proj.weight"
    ft = perturb(base, tmp_path / "ft", scale=0.1, only=lambda n: n == target)
    result = api.diff(base, [ft], options=api.ReadOptions(quiet=True))
    for row in result.rows:
        if row["tensor"] == target:
            assert row["one_minus_cosine"] > 1e-4 and row["relative_change"] > 0.05
        else:
            assert row["one_minus_cosine"] == 0.0 and row["relative_change"] == 0.0, row["tensor"]
    m = result.summary["models"][0]
    assert [c for c, g in m["by_component"].items() if g["relative_change"] > 0] == ["up"]
    assert [layer["layer"] for layer in m["by_layer"] if layer["relative_change"] > 0] == [1]


def test_self_cosine_is_exactly_one(tiny) -> None:
    base = tiny("qwen2")
    result = api.diff(base, [base], options=api.ReadOptions(quiet=True))
    g = result.summary["models"][0]["global"]
    assert g["cosine"] == 1.0 and g["one_minus_cosine"] == 0.0 and g["relative_change"] == 0.0


def test_near_identical_one_minus_cosine_is_accurate(tiny, tmp_path) -> None:
    base = tiny("llama", seed=3)
    gen = torch.Generator().manual_seed(0)

    def nudge(name: str, t: torch.Tensor) -> torch.Tensor:
        return t + 1e-6 * t.abs().mean() * torch.randn(t.shape, generator=gen)

    ft = perturb(base, tmp_path / "ft", fn=nudge)
    result = api.diff(base, [ft], options=api.ReadOptions(quiet=True))
    # independent reference: 1 - cos from float64 tensors in extended form
    b, s = read_state(base), read_state(ft)
    dot = sum(float((b[k].double() * s[k].double()).sum()) for k in b)
    na = sum(float((b[k].double() ** 2).sum()) for k in b)
    nb = sum(float((s[k].double() ** 2).sum()) for k in b)
    d2 = sum(float(((s[k].double() - b[k].double()) ** 2).sum()) for k in b)
    a, bb = math.sqrt(na), math.sqrt(nb)
    ref = (d2 - (a - bb) ** 2) / (2 * a * bb)
    g = result.summary["models"][0]["global"]
    assert g["relative_change"] < 1e-5
    assert g["one_minus_cosine"] == pytest.approx(ref, rel=1e-6)
    assert 1 - dot / (a * bb) == pytest.approx(ref, rel=1e-2)  # the naive form in float64 keeps ~3 digits


def test_orthogonal_vectors_give_zero_cosine(tiny, tmp_path) -> None:
    base = tiny("mistral")
    names = set(read_state(base))
    half = sorted(names)
    first = set(half[: len(half) // 2])
    a = perturb(base, tmp_path / "a", scale=0.05, only=lambda n: n in first)
    b = perturb(base, tmp_path / "b", scale=0.05, only=lambda n: n not in first, seed=9)
    result = api.diff(base, [a, b], options=api.ReadOptions(quiet=True))
    vc = result.summary["vector_cosine"]
    assert vc["matrix"][0][1] == 0.0 and vc["matrix"][0][0] == pytest.approx(1.0)
    assert vc["baseline"]["random_std"] == pytest.approx(1 / math.sqrt(vc["baseline"]["numel"]))


def test_vector_cosine_matches_numpy(tiny, tuned) -> None:
    import numpy as np

    base = tiny("gemma2")
    fts = [tuned(base, scale=0.02, seed=s) for s in (4, 5, 6)]
    result = api.diff(base, fts, options=api.ReadOptions(quiet=True))
    b = read_state(base)
    # tau is defined in float32 (DESIGN.md); products and sums in float64 here
    taus = [
        np.concatenate([(read_state(f)[k].float() - b[k].float()).double().numpy().ravel() for k in sorted(b)])
        for f in fts
    ]
    for i in range(3):
        for j in range(3):
            ref = taus[i] @ taus[j] / np.sqrt((taus[i] @ taus[i]) * (taus[j] @ taus[j]))
            # products are formed in float32 (relative error <= 2^-24 each): |error| <= 2^-24 * sum|a b| / (|a||b|)
            # <= 6e-8 by Cauchy-Schwarz
            assert result.summary["vector_cosine"]["matrix"][i][j] == pytest.approx(ref, abs=6e-8)
    sf = result.summary["vector_cosine"]["baseline"]["signflip_std"][0][1]
    ref_sf = np.sqrt(np.sum(taus[0] ** 2 * taus[1] ** 2)) / np.sqrt((taus[0] @ taus[0]) * (taus[1] @ taus[1]))
    assert sf == pytest.approx(ref_sf, rel=1e-6)


def _named_noise(name: str, t: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return t + 0.01 * torch.randn(t.shape, generator=gen)


def test_sharded_equals_unsharded(tiny, tmp_path) -> None:
    plain, sharded = tiny("llama", seed=7), tiny("llama", seed=7, sharded=True)
    assert len(open_checkpoint(sharded).files) > 1
    r1 = api.diff(plain, [perturb(plain, tmp_path / "a", fn=_named_noise)], options=api.ReadOptions(quiet=True))
    r2 = api.diff(sharded, [perturb(sharded, tmp_path / "b", fn=_named_noise)], options=api.ReadOptions(quiet=True))
    g1, g2 = r1.summary["models"][0]["global"], r2.summary["models"][0]["global"]
    assert g1.keys() == g2.keys()
    for k in g1:
        assert g1[k] == pytest.approx(g2[k], rel=1e-13), k
    strip = [{k: v for k, v in r.items() if k != "model"} for r in r1.rows]
    assert strip == [{k: v for k, v in r.items() if k != "model"} for r in r2.rows]


def test_selection_filters(tiny, tuned) -> None:
    base = tiny("llama")
    sel = Selection(components=("q", "v"), layers=(0, 2), embeddings=False)
    result = api.diff(base, [tuned(base)], selection=sel, options=api.ReadOptions(quiet=True))
    assert {(r["component"], r["layer"]) for r in result.rows} == {("q", 0), ("q", 2), ("v", 0), ("v", 2)}


def test_tied_lm_head_reported_once(tiny, tuned) -> None:
    base = tiny("llama_tied")
    result = api.diff(base, [tuned(base)], options=api.ReadOptions(quiet=True))
    comps = {r["component"] for r in result.rows}
    assert "embed" in comps and "lm_head" not in comps
    ref = sum(t.numel() for k, t in read_state(base).items() if "lm_head" not in k)
    assert result.summary["models"][0]["global"]["numel"] == ref


def test_device_kernel_matches_chunked_loop() -> None:
    """The whole-tensor path used for ``--device cuda`` (run here on the CPU) equals the chunked sums."""
    import torch

    from tunelens.stats.accumulate import part_sums, part_sums_device

    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 517, generator=g).to(torch.bfloat16)
    fts = [(w.float() + 0.01 * torch.randn(300, 517, generator=g)).to(torch.bfloat16) for _ in range(2)]
    vec = 0.01 * torch.randn(300, 517, generator=g)
    srcs = [(fts[0], False), (fts[1], False), (vec, True)]
    ref = part_sums(w, srcs, chunk=1000)
    got = part_sums_device(w, srcs, device="cpu")
    assert got.numel == ref.numel
    assert got.base_sq == pytest.approx(ref.base_sq, rel=1e-12)
    assert got.base_dot == pytest.approx(ref.base_dot, rel=1e-10)
    for a, b in zip(got.cross, ref.cross, strict=True):
        assert a == pytest.approx(b, rel=1e-10)
    for a, b in zip(got.cross_sq, ref.cross_sq, strict=True):
        assert a == pytest.approx(b, rel=1e-10)
    assert all(got.cross_sq[i][i] == 0.0 for i in range(3))


def test_ten_finetunes_in_one_pass(tiny, tuned, monkeypatch: pytest.MonkeyPatch) -> None:
    """N = 10 fine-tunes in one pass: every stored tensor of every model is read exactly once (the base
    too, not N times), and the 10×10 vector-cosine matrix matches numpy."""
    import threading
    from collections import Counter

    import numpy as np

    from tunelens.checkpoints.index import TensorInfo
    from tunelens.checkpoints.stream import TensorReader

    base = tiny("llama")
    fts = [tuned(base, scale=0.02, seed=s) for s in range(10, 20)]
    reads: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    original = TensorReader.read_into  # every read ends here (``read`` allocates, then reads into)

    def counting(self: TensorReader, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        with lock:
            reads[(str(info.file.parent), info.name)] += 1
        return original(self, info, out)

    monkeypatch.setattr(TensorReader, "read_into", counting)
    result = api.diff(base, fts, options=api.ReadOptions(quiet=True, workers=2))
    assert set(reads.values()) == {1}
    assert {folder for folder, _ in reads} == {str(base), *map(str, fts)}
    b = read_state(base)
    taus = [
        np.concatenate([(read_state(f)[k].float() - b[k].float()).double().numpy().ravel() for k in sorted(b)])
        for f in fts
    ]
    m = result.summary["vector_cosine"]["matrix"]
    for i in range(10):
        for j in range(10):
            ref = taus[i] @ taus[j] / np.sqrt((taus[i] @ taus[i]) * (taus[j] @ taus[j]))
            assert m[i][j] == pytest.approx(ref, abs=6e-8)
