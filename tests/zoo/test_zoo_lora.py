"""The zoo's LoRA fine-tune: a PEFT adapter folder trained on the full fine-tune's rows; loads with PEFT."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tunelens.checkpoints.output import MARKER
from tunelens.errors import TunelensError
from tunelens.zoo import LORA_TARGETS, Zoo, ZooSpec


def test_adapter_folder_is_a_peft_adapter_of_the_zoo_base(zoo: Zoo) -> None:
    from safetensors.torch import load_file

    spec = ZooSpec.tiny()
    folder = zoo.adapters["medical"]
    assert set(zoo.adapters) == {"medical"} and folder.name == "medical-lora"
    files = {"adapter_config.json", "adapter_model.safetensors", "tunelens.json", MARKER}
    assert {p.name for p in folder.iterdir()} == files
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == spec.lora_rank and cfg["lora_alpha"] == spec.lora_alpha
    assert set(cfg["target_modules"]) == set(LORA_TARGETS)
    assert cfg["base_model_name_or_path"] == str(zoo.base.resolve())
    state = load_file(str(folder / "adapter_model.safetensors"))
    layers = json.loads((zoo.base / "config.json").read_text())["num_hidden_layers"]
    assert len(state) == 2 * len(LORA_TARGETS) * layers and all("lora_A" in k or "lora_B" in k for k in state)
    assert all(float(state[k].abs().max()) > 0 for k in state if "lora_B" in k)  # B starts at 0: it trained


def test_same_rows_steps_and_tokens_as_the_full_fine_tune(zoo: Zoo) -> None:
    full = json.loads((zoo.tuned["medical"] / "tunelens.json").read_text())
    lora = json.loads((zoo.adapters["medical"] / "tunelens.json").read_text())
    assert lora["kind"] == "lora-adapter" and full["kind"] == "fine-tune"
    assert lora["data"]["trained_ids"] == full["data"]["trained_ids"] and lora["tokens"] == full["tokens"]
    assert lora["recipe"]["steps"] == full["recipe"]["steps"] and lora["recipe"]["seed"] == full["recipe"]["seed"]
    assert lora["recipe"]["lora"]["r"] == ZooSpec.tiny().lora_rank and lora["recipe"]["lr"] == ZooSpec.tiny().lora_lr
    assert len(lora["train_loss"]) == ZooSpec.tiny().steps
    assert zoo.info()["adapters"] == {"medical": "medical-lora"}
    assert zoo.info()["heldout_loss"]["lora"]["medical"] == lora["heldout_loss"]["by_domain"]


def test_adapter_loads_with_peft_and_reproduces_its_recorded_loss(zoo: Zoo) -> None:
    """PEFT loads the saved adapter on the zoo base; the merged weight of one target is W + (alpha/r)·B·A (by
    hand from the adapter file), untargeted tensors are unchanged, and the held-out loss of the loaded model
    equals the one recorded at training time."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelens.testing import read_state
    from tunelens.zoo.data import domain_items, split
    from tunelens.zoo.train import heldout_loss

    spec = ZooSpec.tiny()
    base = AutoModelForCausalLM.from_pretrained(str(zoo.base), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(zoo.adapters["medical"]))
    card = json.loads((zoo.adapters["medical"] / "tunelens.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(zoo.base))
    held = split("medical", list(domain_items("medical")[0]), spec.holdout)[1]
    got = heldout_loss(model, tok, held, seq_len=spec.seq_len, max_tokens=spec.eval_tokens)
    rec = card["heldout_loss"]["by_domain"]["medical"]
    assert got["loss"] == pytest.approx(rec["tuned"], rel=1e-6) and got["tokens"] == rec["tokens"]
    assert rec["tuned"] != rec["base"]
    merged = model.merge_and_unload().state_dict()
    w0 = read_state(zoo.base)
    ad = load_file(str(zoo.adapters["medical"] / "adapter_model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    a = ad[f"base_model.model.{name}.lora_A.weight"].double()
    b = ad[f"base_model.model.{name}.lora_B.weight"].double()
    expected = w0[f"{name}.weight"].double() + spec.lora_alpha / spec.lora_rank * b @ a
    torch.testing.assert_close(merged[f"{name}.weight"].double(), expected, rtol=0, atol=1e-6)
    for k in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.norm.weight"):
        assert torch.equal(merged[k], w0[k])


def test_target_loss_equals_transformers_loss(zoo: Zoo) -> None:
    from transformers import AutoModelForCausalLM

    from tunelens.zoo.train import target_loss

    model = AutoModelForCausalLM.from_pretrained(str(zoo.base), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (3, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0
    labels = ids.clone()
    labels[:, :7] = -100  # context
    labels[2, 30:] = -100  # padding
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    # both cast the logits to float32 (transformers: logits.float()): equal to float32 rounding
    torch.testing.assert_close(target_loss(model, ids, mask, labels), ref, rtol=1e-6, atol=0)


def test_steps_and_device_options() -> None:
    from tunelens.cli.zoo import _spec, zoo_cmd

    assert _spec(False, None, 200, "cuda:1").steps == 200 and _spec(False, None, 200, "cuda:1").device == "cuda:1"
    assert (
        len(
            {ZooSpec.demo().digest(), _spec(False, None, 200, None).digest(), _spec(False, None, None, "cuda").digest()}
        )
        == 3
    )
    for bad in ({"device": "tpu"}, {"device": "cuda:x"}, {"lora_domains": ("law",)}, {"lora_rank": 0}):
        with pytest.raises(TunelensError):
            replace(ZooSpec.tiny(), **bad)  # type: ignore[arg-type]
    a = CliRunner().invoke(zoo_cmd, ["path", "--steps", "200"])
    b = CliRunner().invoke(zoo_cmd, ["path"])
    assert a.exit_code == b.exit_code == 0 and a.output != b.output
    bad = CliRunner().invoke(zoo_cmd, ["path", "--device", "tpu"])
    assert bad.exit_code != 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_zoo_without_cuda_is_one_clear_line(tmp_path: Path) -> None:
    from tunelens.zoo import build

    with pytest.raises(TunelensError, match="no CUDA device"):
        build(replace(ZooSpec.tiny(), device="cuda"), tmp_path, quiet=True)


def test_lora_zoo_folder_is_listed(zoo: Zoo) -> None:
    from tunelens.cli.zoo import zoo_cmd

    res = CliRunner().invoke(zoo_cmd, ["build", "--tiny", "--cache-dir", str(zoo.root.parent), "-q"])
    assert res.exit_code == 0, res.output
    assert f"medical (LoRA adapter): {zoo.adapters['medical']}" in res.output and "medical (LoRA):" in res.output
    assert Path(zoo.adapters["medical"]).is_dir()
