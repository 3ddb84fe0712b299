"""The planned-header sharded writer: exact safetensors bytes, loadable, atomic on failure."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tunelens.checkpoints.output import atomic_dir
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter
from tunelens.errors import TunelensError


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "a": torch.randn(7, 5),
        "b": torch.randn(3).bfloat16(),
        "c": torch.randn(4, 4).half(),
        "d": torch.arange(6, dtype=torch.int64),
        "e": torch.randn(100, 10),
    }


def _plan(ts: dict[str, torch.Tensor]) -> list[PlannedTensor]:
    from tunelens.checkpoints.stream import ST_DTYPES

    return [PlannedTensor(k, tuple(v.shape), ST_DTYPES[v.dtype]) for k, v in ts.items()]


def test_single_file_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    ts = _tensors()
    with ShardedWriter(tmp_path, _plan(ts)) as w:
        for k in reversed(list(ts)):  # any order
            w.write(k, ts[k])
    got = load_file(str(tmp_path / "model.safetensors"))
    assert set(got) == set(ts) and all(torch.equal(got[k], ts[k]) for k in ts)
    # same header entries as safetensors' own writer; contiguous, aligned data; identical tensor bytes
    save_file(ts, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    mine, ref = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "ref.safetensors").read_bytes()
    n1, n2 = int.from_bytes(mine[:8], "little"), int.from_bytes(ref[:8], "little")
    h1, h2 = json.loads(mine[8 : 8 + n1]), json.loads(ref[8 : 8 + n2])
    assert n1 % 8 == 0 and h1 == h2
    spans = sorted(tuple(v["data_offsets"]) for k, v in h1.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == len(mine) - 8 - n1
    for k, v in ts.items():
        assert h1[k]["data_offsets"][0] % v.element_size() == 0


def test_sharded_with_index(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ts = _tensors()
    with ShardedWriter(tmp_path, _plan(ts), max_shard_bytes=200) as w:
        for k, v in ts.items():
            w.write(k, v)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ts)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in ts.values())
    for k, fname in index["weight_map"].items():
        assert torch.equal(load_file(str(tmp_path / fname))[k], ts[k])


def test_unwritten_tensor_is_an_error(tmp_path: Path) -> None:
    ts = _tensors()
    with pytest.raises(RuntimeError, match="unwritten"), ShardedWriter(tmp_path, _plan(ts)) as w:
        w.write("a", ts["a"])


def test_wrong_dtype_is_refused(tmp_path: Path) -> None:
    ts = _tensors()
    w = ShardedWriter(tmp_path, _plan(ts))
    with pytest.raises(ValueError, match="planned"):
        w.write("a", ts["a"].double())
    w.__exit__(ValueError, None, None)


def test_atomic_dir_cleans_up_on_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ts = _tensors()
    target = tmp_path / "out"

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TunelensError, match="no space left"), atomic_dir(target, inputs=()) as tmp:
        with ShardedWriter(tmp, _plan(ts)) as w:
            monkeypatch.setattr(os, "pwrite", full)
            w.write("a", ts["a"])
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(TunelensError, match="already exists.*--force"), atomic_dir(tmp_path / "out", inputs=()):
        pass
    with atomic_dir(tmp_path / "out", force=True, inputs=()) as tmp:
        (tmp / "x").write_text("new")
    assert (tmp_path / "out" / "x").read_text() == "new"


def test_real_full_disk_on_tmpfs(tmp_path: Path) -> None:
    """A 1 MiB tmpfs fills up mid-write: one clear error, nothing left behind."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        big = {"w": torch.randn(1024, 1024)}  # 4 MiB > 1 MiB
        with pytest.raises(TunelensError, match="no space left"), atomic_dir(mnt / "out", inputs=()) as tmp:
            with ShardedWriter(tmp, _plan(big)) as w:
                w.write("w", big["w"])
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
