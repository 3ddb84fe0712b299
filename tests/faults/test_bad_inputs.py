"""Bad model inputs: one ``Error:`` line, exit 2, inputs untouched, nothing written (issue 14 item 6).

Each case breaks a copy of a tiny fine-tune and runs ``tunelens diff BASE BROKEN -o OUT``; the kinds that
already gave clear errors are here too, so they stay that way.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunelens.testing import make_tiny, write_config

SHARD = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _header(shard: Path) -> tuple[dict[str, Any], bytes]:
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _rewrite_header(shard: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header, data = _header(shard)
    edit(header)
    blob = json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _first_tensor(header: dict[str, Any]) -> str:
    return next(k for k in header if k != "__metadata__")


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        header[_first_tensor(header)][key] = value

    return edit


def _remove_tensor(folder: Path, name: str) -> None:
    state = load_file(str(folder / SHARD))
    del state[name]
    save_file(state, str(folder / SHARD), metadata={"format": "pt"})


def _add_tensor(folder: Path, name: str) -> None:
    state = load_file(str(folder / SHARD))
    state[name] = torch.zeros(4)
    save_file(state, str(folder / SHARD), metadata={"format": "pt"})


Breaker = Callable[[Path], Path | None]  # breaks the folder in place; may return another path to use instead

CASES: dict[str, tuple[Breaker, str]] = {
    "missing path": (lambda f: f.parent / "nope", "no such file or folder"),
    "file for a folder": (lambda f: f / SHARD, "expected a model folder .* got a file"),
    "empty folder": (lambda f: (shutil.rmtree(f), f.mkdir())[1], "no config.json"),
    "config.json missing": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "config.json empty": (lambda f: (f / "config.json").write_text(""), "config.json: invalid JSON"),
    "config.json invalid": (lambda f: (f / "config.json").write_text("{"), "config.json: invalid JSON"),
    "config.json a list": (lambda f: (f / "config.json").write_text("[]"), "expected a JSON object"),
    "config.json duplicate key": (
        lambda f: (f / "config.json").write_text('{"model_type": "llama", "model_type": "qwen2"}'),
        "duplicate key 'model_type'",
    ),
    "header truncated": (lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes()[:5]), "no header"),
    "header cut short": (lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes()[:40]), "corrupt or truncated"),
    "header length 2^62": (
        lambda f: (f / SHARD).write_bytes(struct.pack("<Q", 2**62) + (f / SHARD).read_bytes()[8:]),
        "corrupt or truncated safetensors header",
    ),
    "header not JSON": (
        lambda f: (f / SHARD).write_bytes(
            (raw := (f / SHARD).read_bytes())[:8]
            + b"\xff" * struct.unpack("<Q", raw[:8])[0]
            + raw[8:][struct.unpack("<Q", raw[:8])[0] :]
        ),
        "corrupt safetensors header",
    ),
    "header duplicate tensor": (lambda f: _rewrite_dup(f), "duplicate key"),
    "data truncated": (lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes()[:-100]), "truncated"),
    "offsets out of range": (lambda f: _rewrite_header(f / SHARD, _set("data_offsets", [0, 10**9])), "spans|truncated"),
    "unknown dtype": (lambda f: _rewrite_header(f / SHARD, _set("dtype", "F4")), "dtype F4, which tunelens does not"),
    "shape != offsets": (lambda f: _rewrite_header(f / SHARD, _set("shape", [3, 3])), "its shape needs"),
    "0-byte file": (lambda f: (f / SHARD).write_bytes(b""), "truncated safetensors file .0 bytes"),
    "quantization_config": (
        lambda f: write_config(f, quantization_config={"quant_method": "gptq"}),
        "quantized checkpoint .*gptq",
    ),
    "pickle weights without --allow-pickle": (
        lambda f: (f / SHARD).rename(f / "pytorch_model.bin") and None,
        "only pickle weights .*--allow-pickle",
    ),
    "no weights": (lambda f: (f / SHARD).unlink(), "no safetensors weights"),
    "missing tensor": (lambda f: _remove_tensor(f, "model.layers.1.mlp.up_proj.weight"), "up_proj"),
    "config layers 5 over 3": (lambda f: write_config(f, num_hidden_layers=5), "num_hidden_layers = 5.* hold 3"),
    "config hidden size": (lambda f: write_config(f, hidden_size=64), "hidden_size = 64"),
    "config intermediate size": (lambda f: write_config(f, intermediate_size=96), "intermediate_size = 96"),
    "config kv heads": (lambda f: write_config(f, num_key_value_heads=4), "4 key/value heads"),
    "symlink loop": (lambda f: (f.parent / "loop").symlink_to(f.parent / "loop") or f.parent / "loop", "symlink loop"),
}


def _rewrite_dup(folder: Path) -> None:
    """A safetensors header naming one tensor twice (JSON itself would silently keep the last)."""
    header, data = _header(folder / SHARD)
    name = _first_tensor(header)
    blob = json.dumps(header).encode()
    entry = json.dumps({name: header[name]}).encode()[1:-1]
    blob = b"{" + entry + b"," + blob[1:]
    (folder / SHARD).write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_tuned_model(case: str, copies: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = copies
    breaker, match = CASES[case]
    broken = breaker(ft)
    target = broken if isinstance(broken, Path) else ft
    out = tmp_path / "out"
    fault(["diff", base, target, "-o", out, "-q"], inputs=[base, ft], match=match, out=out)


@pytest.fixture()
def sharded(tiny: Any, tuned: Any, tmp_path: Path) -> tuple[Path, Path]:
    base = tiny("llama", sharded=True)
    return base, shutil.copytree(tuned(base), tmp_path / "ft")


def _index(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / INDEX).read_text())
    return data


def _wrong_shard(folder: Path) -> None:
    data = _index(folder)
    shards = list(data["weight_map"].values())
    full = next(f for f in shards if shards.count(f) > 1)  # a shard that still holds others afterwards
    name = next(n for n, f in data["weight_map"].items() if f == full)
    data["weight_map"][name] = next(f for f in shards if f != full)
    (folder / INDEX).write_text(json.dumps(data))


def _duplicate_key(folder: Path) -> None:
    text = (folder / INDEX).read_text()
    name, shard = next(iter(_index(folder)["weight_map"].items()))
    (folder / INDEX).write_text(text.replace('"weight_map": {', f'"weight_map": {{"{name}": "{shard}", ', 1))


INDEX_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing shard": (lambda f: sorted(f.glob("model-*.safetensors"))[1].unlink(), "which is missing"),
    "duplicate key": (_duplicate_key, "duplicate key"),
    "wrong shard": (_wrong_shard, "places .* in .*, but it is in"),
    "invalid JSON": (lambda f: (f / INDEX).write_text("{"), "not a valid safetensors index"),
    "no weight_map": (lambda f: (f / INDEX).write_text("{}"), "not a valid safetensors index"),
    "shard outside the folder": (
        lambda f: (f / INDEX).write_text(json.dumps({"weight_map": {"x": "../x.safetensors"}})),
        "not a file name in the model folder",
    ),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_bad_index(case: str, sharded: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = sharded
    breaker, match = INDEX_CASES[case]
    breaker(ft)
    out = tmp_path / "out"
    fault(["diff", base, ft, "-o", out, "-q"], inputs=[base, ft], match=match, out=out)


class _Payload:
    """Pickles to ``os.system("touch FILE")``: it must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "plain"])
def test_non_weights_pickle_with_allow_pickle(fmt: str, copies: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    """--allow-pickle on a pickle that holds code: refused in one line, and the payload never runs."""
    base, ft = copies
    marker = tmp_path / "payload-ran"
    (ft / SHARD).unlink()
    obj = {"model.embed_tokens.weight": torch.zeros(2), "evil": _Payload(marker)}
    if fmt == "zip":
        torch.save(obj, ft / "pytorch_model.bin")
        match = "refused: it holds more than weights"
    else:
        (ft / "pytorch_model.bin").write_bytes(pickle.dumps(obj))
        match = "cannot read it as pickled weights"
    out = tmp_path / "out"
    fault(["diff", base, ft, "-o", out, "-q", "--allow-pickle"], inputs=[base, ft], match=match, out=out)
    assert not marker.exists(), "the pickled payload ran"


@pytest.mark.parametrize(
    ("family", "key", "value", "match"),
    [
        ("qwen2", "num_attention_heads", 8, "key/value heads"),
        ("qwen3", "head_dim", 16, "head_dim"),
        ("gemma3", "num_hidden_layers", 2, "num_hidden_layers = 2.* hold 3"),
        ("mistral", "hidden_size", 48, "hidden_size = 48"),
        ("phi3", "intermediate_size", 32, "intermediate_size = 32"),
        ("phi3", "num_key_value_heads", 4, "fused q/k/v rows"),
        ("gpt2", "n_embd", 64, "n_embd 64"),
        ("gpt2", "n_layer", 4, "n_layer = 4"),
    ],
)
def test_config_must_agree_with_weights(
    family: str, key: str, value: int, match: str, tiny: Any, tmp_path: Path, fault: Any
) -> None:
    """inspect (and every reader) refuses a config.json that disagrees with the tensors, naming both values."""
    model = shutil.copytree(tiny(family), tmp_path / "m")
    write_config(model, **{key: value})
    fault(["inspect", model], inputs=[model], match=match)


def test_generic_architectures_check_only_what_is_known(tmp_path: Path) -> None:
    """The regex fallback: fewer layers than the config says is an error; extra stacks are not."""
    from tunelens.checkpoints.index import open_checkpoint
    from tunelens.errors import TunelensError

    model = make_tiny("llama", tmp_path / "m", tokenizer=False)
    write_config(model, model_type="somethingnew", architectures=["SomethingNewForCausalLM"])
    assert open_checkpoint(model).arch.family == "generic"
    write_config(model, num_hidden_layers=2)  # e.g. extra MTP layers in the weights: allowed
    open_checkpoint(model)
    write_config(model, num_hidden_layers=4, hidden_size=999)  # hidden size is not checked without the table
    with pytest.raises(TunelensError, match="num_hidden_layers = 4, but the weights hold 3"):
        open_checkpoint(model)


def test_mismatched_models(tiny: Any, tmp_path: Path, fault: Any) -> None:
    """Hidden size, vocabulary and architecture mismatches between BASE and TUNED, and duplicate names."""
    base = tiny("llama")
    out = tmp_path / "out"
    wide = tiny("llama", hidden_size=48, head_dim=12)
    fault(["diff", base, wide, "-o", out], inputs=[base, wide], match="shape|hidden", out=out)
    vocab = tiny("llama", vocab_size=400)
    fault(["diff", base, vocab, "-o", out], inputs=[base, vocab], match="--vocab", out=out)
    phi = tiny("phi3")
    fault(["diff", base, phi, "-o", out], inputs=[base, phi], match="architecture|missing|phi3", out=out)
    fault(["diff", base, f"a={base}", f"a={base}", "-o", out], inputs=[base], match="unique", out=out)


def test_extra_tensor_in_a_tuned_model_is_recorded(copies: tuple[Path, Path], tmp_path: Path) -> None:
    """A tensor only the tuned model has is left out of every number and said so in the metadata."""
    from click.testing import CliRunner

    from tunelens.cli import cli

    base, ft = copies
    _add_tensor(ft, "model.layers.0.extra.weight")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["diff", str(base), str(ft), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    notes = json.loads((out / "summary.json").read_text())["alignment"]["notes"]
    assert any("1 tensor(s) the base lacks, ignored (model.layers.0.extra.weight" in n for n in notes)
