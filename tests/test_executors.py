"""The process and Ray executors give the in-process run's outputs byte for byte, and survive a killed worker.

Every streaming stage that can run on them (diff, vector, apply, subspace) writes its folder with the
thread executor and again with the other one; the data files must be identical and the JSON equal up
to timing and command-line metadata. A worker killed mid-run (the ``TUNELENS_FAULT_DIR`` hook of
:mod:`tunelens.executors`) is replaced and its job re-run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tunelens import api
from tunelens.arithmetic.spec import build_recipe, parse_vector_spec
from tunelens.config import ReadOptions
from tunelens.errors import TunelensError
from tunelens.executors import FAULT_ENV

TIMING = {
    "wall_seconds", "started_unix", "peak_rss_bytes", "peak_rss_children_bytes", "command",
    "decompose_seconds", "project_seconds", "folder", "executor",
}  # fmt: skip


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def assert_same_folder(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert names
    for rel in names:
        if rel.suffix == ".json":
            assert _strip(json.loads((a / rel).read_text())) == _strip(json.loads((b / rel).read_text())), rel
        elif rel.name != "README.md":  # the model card quotes the command line
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def models(tiny: Callable[..., Path], tuned: Callable[..., Path]) -> tuple[Path, Path, Path]:
    base = tiny("llama", sharded=True)
    return base, tuned(base, scale=0.05, seed=1), tuned(base, scale=0.03, seed=2)


def run_all(models: tuple[Path, Path, Path], out: Path, options: ReadOptions, ssa_cache: Path) -> None:
    """diff, vector, apply and subspace into ``out``/<stage> with ``options``."""
    base, ft1, ft2 = models
    api.diff(str(base), [f"a={ft1}", f"b={ft2}"], out=out / "diff", options=options)
    api.vector(str(base), str(ft1), out=out / "vector", options=options)
    specs = [parse_vector_spec(f"{ft1}:-1"), parse_vector_spec(f"{ft2}:0.5")]
    recipe = build_recipe(base, specs, method="ties", density=0.5, shard_bytes=40_000)  # several output shards
    api.apply(recipe, out / "apply", options=options)
    api.subspace(
        str(base), [f"a={ft1}", f"b={ft2}"], out=out / "subspace", energy=[0.5, 0.9], per_head=True,
        tau_spectrum=True, options=options, cache_dir=ssa_cache,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(models: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("thread")
    run_all(models, out, ReadOptions(quiet=True), out / "cache")
    return out


def same_as_threads(models: tuple[Path, Path, Path], reference: Path, out: Path, executor: str) -> None:
    run_all(models, out, ReadOptions(quiet=True, executor=executor), out / "cache")  # type: ignore[arg-type]
    for stage in ("diff", "vector", "apply", "subspace"):
        assert_same_folder(reference / stage, out / stage)


def survives_a_kill(models: tuple[Path, Path, Path], reference: Path, out: Path, faults: Path, executor: str) -> None:
    base, ft1, ft2 = models
    (faults / "kill-next").touch()
    options = ReadOptions(quiet=True, executor=executor)  # type: ignore[arg-type]
    api.diff(str(base), [f"a={ft1}", f"b={ft2}"], out=out / "diff", options=options)
    assert len(list(faults.glob("killed-*"))) == 1  # a worker really died
    assert_same_folder(reference / "diff", out / "diff")


@pytest.fixture
def fault_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "faults"
    folder.mkdir()
    monkeypatch.setenv(FAULT_ENV, str(folder))
    return folder


def test_process_executor_matches_threads(models: tuple[Path, Path, Path], reference: Path, tmp_path: Path) -> None:
    same_as_threads(models, reference, tmp_path, "process")


def test_process_executor_recovers_a_killed_worker(
    models: tuple[Path, Path, Path], reference: Path, tmp_path: Path, fault_dir: Path
) -> None:
    survives_a_kill(models, reference, tmp_path, fault_dir, "process")


def test_process_executor_gives_up_after_retries(models: tuple[Path, Path, Path], fault_dir: Path) -> None:
    base, ft1, _ = models
    (fault_dir / "kill-next").touch()
    with pytest.raises(TunelensError, match="died 1 times.*--retries 0"):
        api.diff(str(base), [str(ft1)], options=ReadOptions(executor="process", retries=0))


def test_a_raised_error_stops_the_run_unretried() -> None:
    """An exception in a job (bad input) is the run's error; only a dead worker is retried."""
    from tunelens.executors import iter_process

    done: list[str] = []
    assert list(iter_process(["1", "2", "3"], int, workers=2, retries=3, on_done=done.append)) == [1, 2, 3]
    assert done == ["1", "2", "3"]
    with pytest.raises(ValueError, match="invalid literal"):
        list(iter_process(["1", "x", "3"], int, workers=2, retries=3, on_done=done.append))


def test_bad_input_is_one_error_under_processes(models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, ft1, _ = models
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ft1.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = sorted(broken.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(TunelensError):
        api.diff(str(base), [str(broken)], options=ReadOptions(executor="process"))


def test_options_are_validated() -> None:
    with pytest.raises(TunelensError, match="--executor"):
        ReadOptions(executor="dask")  # type: ignore[arg-type]
    with pytest.raises(TunelensError, match="--address is for --executor ray"):
        ReadOptions(address="auto")


# --- ray --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local 2-CPU Ray cluster whose workers see the fault-injection folder (set before it starts)."""
    ray = pytest.importorskip("ray") if os.environ.get("TUNELENS_REQUIRE_RAY") != "1" else __import__("ray")
    faults = tmp_path_factory.mktemp("ray-faults")
    old = os.environ.get(FAULT_ENV)
    os.environ[FAULT_ENV] = str(faults)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield faults
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(FAULT_ENV, None)
        else:
            os.environ[FAULT_ENV] = old


def test_ray_executor_matches_threads(
    models: tuple[Path, Path, Path], reference: Path, tmp_path: Path, ray_cluster: Path
) -> None:
    same_as_threads(models, reference, tmp_path, "ray")


def test_ray_executor_recovers_a_killed_worker(
    models: tuple[Path, Path, Path], reference: Path, tmp_path: Path, ray_cluster: Path
) -> None:
    survives_a_kill(models, reference, tmp_path, ray_cluster, "ray")


def test_ray_job_error_keeps_its_message(ray_cluster: Path) -> None:
    from tunelens.executors import iter_ray

    assert list(iter_ray(["1", "2"], int, workers=2, address=None, retries=1, on_done=lambda j: None)) == [1, 2]
    with pytest.raises(ValueError, match="invalid literal"):
        list(iter_ray(["1", "x"], int, workers=2, address=None, retries=1, on_done=lambda j: None))
