"""`tunelens vector --lora` (needs the vector_lora.patch in cli/weights.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_cli_vector_lora(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.cli import cli

    base = tiny("qwen2")
    out = tmp_path / "l"
    args = ["vector", str(base), str(tuned(base)), "--lora", "--rank", "2", "--keep-full", "-o", str(out), "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "LoRA tensors" in res.output and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    assert json.loads((out / "tunelens.json").read_text())["tensors"]["kept_full"]
    res = CliRunner().invoke(cli, ["vector", str(base), str(tuned(base)), "--lora", "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "exactly one of --rank" in res.output
