"""Bad input gets one clear error (TunelensError) before any heavy work."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from tunelens.checkpoints.align import align
from tunelens.checkpoints.index import open_checkpoint, read_safetensors_header
from tunelens.checkpoints.stream import TensorReader
from tunelens.errors import TunelensError
from tunelens.testing import read_state, write_config


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_header_matches_safetensors(tiny) -> None:
    folder = tiny("qwen2", sharded=True)
    ck = open_checkpoint(folder)
    ref = read_state(folder)
    assert set(ck.tensors) == set(ref)
    with TensorReader() as reader:
        for name, info in ck.tensors.items():
            got = reader.read(info)
            assert got.dtype == ref[name].dtype and got.shape == ref[name].shape
            assert torch.equal(got, ref[name]), name


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(TunelensError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nope")


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(TunelensError, match="no config.json"):
        open_checkpoint(tmp_path)


def test_truncated_shard(tiny, tmp_path: Path) -> None:
    folder = _copy(tiny("llama"), tmp_path / "m")
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(TunelensError, match="truncated"):
        open_checkpoint(folder)


def test_corrupt_header(tiny, tmp_path: Path) -> None:
    folder = _copy(tiny("llama"), tmp_path / "m")
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[10:20] = b"\x00\xff" * 5
    shard.write_bytes(bytes(data))
    with pytest.raises(TunelensError, match="corrupt"):
        open_checkpoint(folder)
    shard.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(TunelensError, match="corrupt or truncated"):
        read_safetensors_header(shard)


def test_missing_shard(tiny, tmp_path: Path) -> None:
    folder = _copy(tiny("llama", sharded=True), tmp_path / "m")
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(TunelensError, match="missing"):
        open_checkpoint(folder)


def test_quantized_config_refused(tiny, tmp_path: Path) -> None:
    folder = _copy(tiny("llama"), tmp_path / "m")
    write_config(folder, quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(TunelensError, match="quantized checkpoint .*gptq"):
        open_checkpoint(folder)


def test_quantized_tensors_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file(
        {"model.layers.0.mlp.up_proj.qweight": torch.zeros(4, 4, dtype=torch.int32)}, str(folder / "model.safetensors")
    )
    with pytest.raises(TunelensError, match="quantized tensor"):
        open_checkpoint(folder)


def test_gguf_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(TunelensError, match="GGUF"):
        open_checkpoint(f)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(TunelensError, match="GGUF"):
        open_checkpoint(tmp_path / "folder")


def test_pickle_needs_flag(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(tiny("llama") / "config.json", folder / "config.json")
    state = read_state(tiny("llama"))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(TunelensError, match="--allow-pickle"):
        open_checkpoint(folder)
    with pytest.warns(UserWarning, match="pickle"):
        ck = open_checkpoint(folder, allow_pickle=True)
    with TensorReader() as reader:
        for name, ref in state.items():
            assert torch.equal(reader.read(ck.tensors[name]), ref)


def test_architecture_mismatch(tiny) -> None:
    with pytest.raises(TunelensError, match="architectures differ"):
        align(open_checkpoint(tiny("llama")), [open_checkpoint(tiny("qwen2"))])


def test_shape_mismatch(tiny) -> None:
    with pytest.raises(TunelensError, match="shape mismatch"):
        align(open_checkpoint(tiny("llama")), [open_checkpoint(tiny("llama", intermediate_size=96))])


def test_vocab_resize_needs_a_choice(tiny) -> None:
    base = open_checkpoint(tiny("llama"))
    bigger = open_checkpoint(tiny("llama", vocab_size=324))
    with pytest.raises(TunelensError, match=r"vocabulary sizes differ.*320 rows.*324 \(\+4\).*--vocab crop"):
        align(base, [bigger])
    cropped = align(base, [bigger], vocab="crop")
    assert {c["tensor"] for c in cropped.cropped} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(c["rows"] == 320 for c in cropped.cropped)
    skipped = align(base, [bigger], vocab="skip")
    assert {s["tensor"] for s in skipped.skipped} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert len(skipped.tensors) == len(cropped.tensors) - 2


def test_missing_tensor_needs_a_choice(tiny, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _copy(tiny("llama"), tmp_path / "m")
    state = read_state(folder)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    base = open_checkpoint(tiny("llama"))
    with pytest.raises(TunelensError, match="lacks 1 float tensor.*up_proj.*--missing skip"):
        align(base, [open_checkpoint(folder)])
    al = align(base, [open_checkpoint(folder)], missing="skip")
    assert [s["tensor"] for s in al.skipped] == ["model.layers.1.mlp.up_proj.weight"]


def test_dtype_difference_is_reported(tiny, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _copy(tiny("llama"), tmp_path / "m")
    state = {k: v.bfloat16() for k, v in read_state(folder).items()}
    save_file(state, str(folder / "model.safetensors"))
    al = align(open_checkpoint(tiny("llama")), [open_checkpoint(folder)])
    assert any("BF16" in n for n in al.notes)


def test_model_card_base_model_warns(tiny, tmp_path: Path) -> None:
    folder = _copy(tiny("llama"), tmp_path / "m")
    (folder / "README.md").write_text("---\nbase_model: meta-llama/Llama-3-8B\n---\n# card\n")
    with pytest.warns(UserWarning, match="base_model 'meta-llama/Llama-3-8B'"):
        al = align(open_checkpoint(tiny("llama")), [open_checkpoint(folder)])
    assert any("base_model" in n for n in al.notes)
