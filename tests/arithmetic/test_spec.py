"""Vector specs, sizes, per-component factors, YAML recipes and the ``apply`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunelens.arithmetic.spec import (
    VectorSpec,
    build_recipe,
    load_recipe,
    parse_component_scales,
    parse_size,
    parse_vector_spec,
)
from tunelens.config import Selection
from tunelens.errors import TunelensError


@pytest.mark.parametrize(
    ("text", "name", "path", "scale"),
    [
        ("ft/", "ft", "ft", 1.0),
        ("ft/:0.5", "ft", "ft", 0.5),
        ("med=ft/", "med", "ft", 1.0),
        ("med=ft/:-1", "med", "ft", -1.0),
        ("med=/abs/ft-med:-2.5e-1", "med", "/abs/ft-med", -0.25),
        ("runs/a=b/ft", "ft", "runs/a=b/ft", 1.0),  # '=' after a '/' is part of the path
        ("ft:+.5", "ft", "ft", 0.5),
    ],
)
def test_parse_vector_spec(text: str, name: str, path: str, scale: float) -> None:
    spec = parse_vector_spec(text)
    assert (spec.name, spec.path, spec.scale) == (name, Path(path), scale)


def test_parse_vector_spec_errors() -> None:
    for bad in ("", "med=", "med=:1"):
        with pytest.raises(TunelensError):
            parse_vector_spec(bad)
    # a typo in λ names the λ (not "no such file ft:abc"); λ must be a finite float64
    for bad, message in [("ft:abc", "λ 'abc' is not a number"), ("med=ft:", "λ '' is not a number"),
                         ("ft:1e400", "λ 1e400 is not a finite"), ("ft:-1e309", "not a finite")]:  # fmt: skip
        with pytest.raises(TunelensError, match=message):
            parse_vector_spec(bad)


def test_a_path_holding_a_colon_still_works(tmp_path: Path) -> None:
    folder = tmp_path / "run:abc"
    folder.mkdir()
    spec = parse_vector_spec(f"med={folder}")
    assert (spec.name, spec.path, spec.scale) == ("med", folder, 1.0)
    assert parse_vector_spec(f"{folder}:-2").scale == -2.0


def test_sizes_and_component_scales() -> None:
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("1GiB") == 1024**3 and parse_size("123") == 123 and parse_size(7) == 7
    with pytest.raises(TunelensError):
        parse_size("lots")
    assert parse_component_scales(["mlp=0.5", "q=2"]) == (("gate", 0.5), ("up", 0.5), ("down", 0.5), ("q", 2.0))
    for bad in (["mlp"], ["mlp=x"], ["up=1", "mlp=2"], ["nope=1"]):
        with pytest.raises(TunelensError):
            parse_component_scales(bad)


def test_term_scale_and_recipe_checks() -> None:
    specs = [VectorSpec("a", Path("a"), -1.0), VectorSpec("b", Path("b"), 2.0)]
    r = build_recipe("base", specs, selection=Selection(components=("up", "q"), layers=(1,)),
                     component_scales=(("up", 0.5),), mean=True)  # fmt: skip
    a, b = r.terms
    assert a.scale_for(1, "up") == -0.25 and b.scale_for(1, "q") == 1.0
    assert a.scale_for(0, "up") == 0.0 and a.scale_for(1, "k") == 0.0 and a.scale_for(None, "embed") == 0.0
    with pytest.raises(TunelensError, match="unique"):
        build_recipe("base", [specs[0], specs[0]])
    with pytest.raises(TunelensError, match="density"):
        build_recipe("base", specs, method="ties")
    with pytest.raises(TunelensError, match="density"):
        build_recipe("base", specs, density=0.5)
    with pytest.raises(TunelensError, match="at least one"):
        build_recipe("base", [])


def test_yaml_recipe(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "base: models/base\n"
        "target: pre\n"
        "only: mlp\n"
        "scale: {down: 0.5}\n"
        "mean: true\n"
        "vectors:\n"
        "  - med=ft-med:-1\n"
        "  - {name: math, path: /abs/ft-math, scale: 2, layers: 0-1, component_scales: {up: 3}}\n"
        "method: ties\n"
        "density: 0.2\n"
        "shard_size: 1GB\n"
    )
    r = load_recipe(tmp_path / "r.yaml")
    assert r.base == tmp_path / "models/base" and r.method == "ties" and r.density == 0.2
    assert r.shard_bytes == 10**9 and r.mean
    med, math = r.terms
    assert med.spec == VectorSpec("med", tmp_path / "ft-med", -0.5)
    assert math.spec.path == Path("/abs/ft-math") and math.spec.scale == 1.0
    assert med.scale_for(5, "down") == -0.25 and med.scale_for(5, "q") == 0.0
    assert math.scale_for(1, "up") == 3.0 and math.scale_for(2, "up") == 0.0 and math.scale_for(0, "down") == 0.5
    bad = {
        "base: b\nvectors: [a]\nlambda: 3\n": "unknown key",
        "base: b\nvectors: [{path: a, scale: big}]\n": "scale must be a number",
        "base: b\nvectors: [a]\nmethod: ties\ndensity: much\n": "density must be a number",
        "base: b\nvectors: [a]\nseed: 1.5\n": "seed must be an integer",
        "base: b\nvectors: [a]\ntarget: sideways\n": "target must be pre or ft",
        "base: b\nvectors: [a]\nshard_size: lots\n": "bad size",
        "base: b\nvectors: [a]\nlayers: 0-x\n": "bad --layers",
        "vectors: [a]\n": "needs base",
        "- just a list\n": "YAML mapping",
        "base: [unclosed\n": "invalid YAML",
    }
    for i, (text, message) in enumerate(bad.items()):
        (tmp_path / f"bad{i}.yaml").write_text(text)
        with pytest.raises(TunelensError, match=message):
            load_recipe(tmp_path / f"bad{i}.yaml")


def test_cli_apply_recipe_and_errors(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.cli import cli

    base = tiny("llama")
    ft = tuned(base)
    (tmp_path / "r.yaml").write_text(f"base: {base}\nvectors: ['med={ft}:-1']\nonly: attention\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["apply", "--recipe", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert "28 tensors edited" not in res.output and "12 of 30 tensors edited" in res.output
    res = runner.invoke(cli, ["apply", "--recipe", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "p"), "--mean"])
    assert res.exit_code == 2 and "--recipe holds the whole recipe" in res.output
    res = runner.invoke(cli, ["apply", str(base), "-o", str(tmp_path / "q")])
    assert res.exit_code == 2 and "at least one -v" in res.output
    res = runner.invoke(cli, ["apply", str(base), "-v", str(tmp_path / "nope"), "-o", str(tmp_path / "q")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(cli, ["apply", str(base), "-v", f"{ft}:-1", "--target", "ft", "--only", "mlp",
                              "--components", "up,q", "--scale", "up=0.5", "-o", str(tmp_path / "r"), "-q"])  # fmt: skip  # noqa: E501
    assert res.exit_code == 0, res.output
    assert "3 of 30 tensors edited" in res.output


def test_cli_dtype_shard_size_card_and_metadata(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    import json

    import torch
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.cli import cli
    from tunelens.testing import read_state

    base = tiny("qwen2")
    ft = tuned(base)
    out = tmp_path / "o"
    args = ["apply", str(base), "-v", f"med={ft}:-1", "--only", "mlp", "--layers", "1-2", "--scale", "down=0.5",
            "--dtype", "bfloat16", "--shard-size", "40KB", "-o", str(out), "-q"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).stat().st_size <= 40_000 + 4096 for s in shards)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16  # config.json's dtype follows --dtype
    got, b, f = read_state(out), read_state(base), read_state(ft)
    for k in b:
        lam = -0.5 if ".down_proj." in k else -1.0
        if ".mlp." in k and (".layers.1." in k or ".layers.2." in k):
            want = (b[k].double() + lam * (f[k].double() - b[k].double())).float().to(torch.bfloat16)
            assert torch.equal(got[k], want), k  # float32 compute rounded once to bf16 (float64 agrees here)
        else:
            assert torch.equal(got[k], b[k].to(torch.bfloat16)), k
    meta = json.loads((out / "tunelens.json").read_text())
    term = meta["recipe"]["terms"][0]
    assert term["scale"] == -1.0 and term["component_scales"] == {"down": 0.5}
    assert term["mask"]["components"] != "all" and term["mask"]["layers"] != "all"
    assert meta["base"]["sha256"] == open_checkpoint(base).fingerprint
    assert meta["vectors"][0]["sha256"] == open_checkpoint(ft).fingerprint and meta["vectors"][0]["kind"] == "model"
    assert meta["compute_dtype"] == "float32" and meta["output_dtype"] == "bfloat16"
    assert meta["recipe"]["shard_bytes"] == 40_000
    assert {"skipped", "cropped"} <= set(meta["alignment"])
    assert {"command", "tunelens_version", "inputs", "wall_seconds", "definitions"} <= set(meta)
    assert meta["tensors"]["edited"] == 6
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "λ = -1" in card and "layers 1,2" in card and "down×0.5" in card


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "x"], "bad --layers"),
        (["--layers", "5"], "not in"),
        (["--only", "mlpp"], "unknown component"),
        (["--scale", "mlp"], "bad --scale"),
        (["--method", "ties"], "needs --density"),
        (["--density", "0.5"], "--density only applies"),
        (["--method", "ties", "--density", "1.5"], "needs --density in (0, 1]"),
        (["--shard-size", "lots"], "bad size"),
        (["-v", "{ft}"], "unique"),
    ],
)
def test_cli_bad_input_is_one_line(extra: list[str], message: str, tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.cli import cli

    base = tiny("llama")
    ft = tuned(base)
    extra = [e.format(ft=ft) for e in extra]
    res = CliRunner().invoke(cli, ["apply", str(base), "-v", str(ft), *extra, "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], res.output
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_cli_target_ft_needs_a_model_folder(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.cli import cli
    from tunelens.vectors.write import write_vector

    base = tiny("llama")
    vec = write_vector(open_checkpoint(base), open_checkpoint(tuned(base)), tmp_path / "vec")
    res = CliRunner().invoke(cli, ["apply", str(base), "-v", f"{vec}:-1", "--target", "ft", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "needs the first vector to be a fine-tuned model folder" in res.output
