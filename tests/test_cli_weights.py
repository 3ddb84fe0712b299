"""CLI smoke runs: outputs written, bad input gives one line and exit code 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.stats.diff import TENSOR_COLUMNS


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_help_for_every_command(runner: CliRunner) -> None:
    for name in cli.commands:
        r = runner.invoke(cli, [name, "--help"])
        assert r.exit_code == 0, name
        assert "Usage" in r.output


def test_inspect(runner: CliRunner, tiny) -> None:
    r = runner.invoke(cli, ["inspect", str(tiny("phi3")), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["family"] == "phi3" and info["num_kv_heads"] == 2 and info["layers"] == 3
    assert info["parameters_by_component"]["q"] == 3 * 32 * 32
    assert info["parameters_by_component"]["k"] == 3 * 16 * 32
    assert sum(info["parameters_by_component"].values()) == info["parameters"]
    r = runner.invoke(cli, ["inspect", str(tiny("gemma"))])
    assert r.exit_code == 0 and "tie_word_embeddings" in r.output


def test_diff_writes_contract_files(runner: CliRunner, tiny, tuned, tmp_path: Path) -> None:
    base = tiny("llama")
    out = tmp_path / "d"
    r = runner.invoke(
        cli, ["diff", str(base), f"med={tuned(base, seed=1)}", f"math={tuned(base, seed=2)}", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    with (out / "tensors.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == TENSOR_COLUMNS
    assert {row["model"] for row in rows} == {"med", "math"}
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["med", "math"]
    assert summary["vector_cosine"]["names"] == ["med", "math"]
    for key in ("tunelens_version", "definitions", "inputs", "command", "wall_seconds", "peak_rss_bytes"):
        assert key in summary
    assert len(summary["inputs"]) == 3 and all(len(i["sha256"]) == 64 for i in summary["inputs"])
    # existing output refused without --force, then replaced with it
    r = runner.invoke(cli, ["diff", str(base), str(tuned(base, seed=1)), "-o", str(out), "-q"])
    assert r.exit_code == 2 and "already exists" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["diff", str(base), str(tuned(base, seed=1)), "-o", str(out), "-q", "--force"])
    assert r.exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["diff", "/nonexistent/base", "/nonexistent/ft", "-o", "{tmp}/o"], "no such file or folder"),
        (["diff", "{llama}", "{qwen2}", "-o", "{tmp}/o"], "architectures differ"),
        (["diff", "{llama}", "{vocab}", "-o", "{tmp}/o"], "vocabulary sizes differ"),
        (["diff", "{llama}", "{llama}", "--components", "attn", "-o", "{tmp}/o"], "unknown component"),
        (["diff", "{llama}", "{llama}", "--layers", "3-1", "-o", "{tmp}/o"], "bad --layers"),
        (["inspect", "{tmp}"], "no config.json"),
    ],
)
def test_bad_input_one_line(runner: CliRunner, tiny, tmp_path: Path, args: list[str], message: str) -> None:
    paths = {"tmp": str(tmp_path), "llama": str(tiny("llama")), "qwen2": str(tiny("qwen2")),
             "vocab": str(tiny("llama", vocab_size=324))}  # fmt: skip
    r = runner.invoke(cli, [a.format(**paths) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_vocab_crop_via_cli(runner: CliRunner, tiny, tmp_path: Path) -> None:
    r = runner.invoke(
        cli,
        [
            "diff",
            str(tiny("llama")),
            str(tiny("llama", vocab_size=324)),
            "--vocab",
            "crop",
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert {c["tensor"] for c in summary["alignment"]["cropped"]} == {"model.embed_tokens.weight", "lm_head.weight"}


def test_vector_cli(runner: CliRunner, tiny, tuned, tmp_path: Path) -> None:
    base = tiny("llama")
    r = runner.invoke(cli, ["vector", str(base), str(tuned(base)), "-o", str(tmp_path / "v"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "v" / "tunelens.json").exists() and (tmp_path / "v" / "model.safetensors").exists()
