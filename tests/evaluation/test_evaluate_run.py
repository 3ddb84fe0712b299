"""End to end on tiny models: the CLI's files, traceability, --limit, --apply / --sweep, greedy generation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest

from tunelens import api
from tunelens.cli import cli
from tunelens.evaluation.generate import cut_at_stop, generate
from tunelens.evaluation.lm_eval_adapter import results_rows
from tunelens.evaluation.metrics import BINARY_METRICS
from tunelens.evaluation.run import RunOptions


def read_samples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_traceable_results(tiny: Callable[..., Path], data_dir: Path, tmp_path: Path) -> None:
    model, out = tiny("llama"), tmp_path / "eval"
    args = ["evaluate", str(model), "-t", "mmlu_medical", "-t", "gsm8k", "-t", "format_medical",
            "--data-dir", str(data_dir), "--limit", "3", "--num-fewshot", "1", "--max-new-tokens", "6",
            "--batch-size", "2", "-q", "-o", str(out)]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "results.json").read_text())
    samples = read_samples(out / "samples.jsonl")
    assert {"definitions", "tunelens_version", "command", "results", "tasks", "timing"} <= set(summary)
    assert summary["definitions"]["acc_norm"].startswith("1 if argmax_i loglikelihood_i / len(choice_i)")
    metrics = {(row["task"], row["metric"]) for row in summary["results"]}
    assert {("mmlu_medical", "acc"), ("mmlu_medical", "acc_norm"), ("gsm8k", "exact_match")} <= metrics
    assert {("format_medical", m) for m in ("follow_tags", "follow_answer", "follow_stop", "follow_all")} <= metrics
    for row in summary["results"]:  # every number is the mean of its samples' scores, with n and stderr
        vals = [s["scores"][row["metric"]] for s in samples if s["task"] == row["task"]]
        n = 2 if row["task"] == "gsm8k" else 3  # the gsm8k file has 2 rows: --limit 3 takes them all
        assert row["n"] == len(vals) == n
        mean = math.fsum(vals) / n
        assert row["value"] == pytest.approx(mean, abs=1e-15)
        var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
        assert row["stderr"] == pytest.approx(math.sqrt(var / n), abs=1e-15)
        # the interval: Wilson for 0/1 metrics, the percentile bootstrap (seed 0, 10,000 resamples) otherwise
        if row["metric"] in BINARY_METRICS:
            ref = binomtest(int(round(mean * n)), n).proportion_ci(method="wilson")
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
        else:
            idx = np.random.default_rng(0).integers(0, n, size=(10_000, n))
            want = np.quantile(np.array(vals)[idx].mean(axis=1), [0.025, 0.975])
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(want), abs=1e-12)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert "Wilson" in summary["definitions"]["ci_low / ci_high"]
    mc = [s for s in samples if s["task"] == "mmlu_medical"]
    assert [s["id"] for s in mc] == ["anatomy-test-0", "anatomy-test-1", "virology-test-0"]  # --limit: first 3
    assert all(len(s["loglikelihoods"]) == 4 and s["prompt"].endswith("Answer:") for s in mc)
    assert "Answer: A\n\n" in mc[0]["prompt"]  # the 1-shot example from the dev split
    gen = [s for s in samples if s["task"] == "gsm8k"]
    assert all(s["new_tokens"] <= 6 and "output" in s and s["reference"] in ("5", "12") for s in gen)
    header = "model,variant,task,metric,value,n,stderr,ci_low,ci_high"
    assert (out / "results.csv").read_text().splitlines()[0] == header
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "Error:" in again.output  # existing output refused without --force


def test_bad_task_fails_before_loading(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "-t", "no_such_task", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown task" in r.output


def test_sweep_on_one_resident_model(tiny: Callable[..., Path], tuned: Callable[..., Path], data_dir: Path) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.2, seed=3)
    opts = RunOptions(quiet=True)
    task = ["mmlu_medical"]
    swept = api.evaluate(base, task, data_dir=data_dir, apply=[f"ft={ft}"], sweep="1,0", options=opts)
    plain_base = api.evaluate(base, task, data_dir=data_dir, options=opts)
    plain_ft = api.evaluate(ft, task, data_dir=data_dir, options=opts)

    def lls(result: Any, variant: str) -> list[list[float]]:
        return [s["loglikelihoods"] for s in result.samples if s["variant"] == variant]

    assert [v["name"] for v in swept.summary["variants"]] == ["sweep=1", "sweep=0"]
    assert swept.summary["variants"][0]["terms"][0]["lambda"] == 1.0
    assert lls(swept, "sweep=0") == lls(plain_base, "as_loaded")  # λ = 0 after λ = 1: restored bit for bit
    for a, b in zip(lls(swept, "sweep=1"), lls(plain_ft, "as_loaded"), strict=True):
        assert a == pytest.approx(b, abs=1e-5)  # base + 1·(ft − base) in float32 ≈ ft
    assert lls(swept, "sweep=1") != lls(plain_base, "as_loaded")


def _naive_greedy(model: Any, ids: list[int], steps: int, eos: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
    return out


def test_batched_left_padded_generation_equals_naive_greedy(tiny: Callable[..., Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny("llama", seed=5)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    prompts = ["Question: Which organ filters blood? Answer:", "Solve for x:", "The patient presented with fever"]
    naive = [tok.decode(_naive_greedy(model, tok.encode(p), 12, tok.eos_token_id), skip_special_tokens=True)
             for p in prompts]  # fmt: skip
    got = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, quiet=True)
    assert [g.text for g in got] == naive  # different prompt lengths: left padding must not change the output
    assert all(g.new_tokens <= 12 and g.stop_reason in ("eos", "length") for g in got)
    # a stop string taken from the middle of the first output: generation stops there and the text is cut before it
    stop = naive[0][len(naive[0]) // 2 :][:3]
    assert stop.strip()
    cut = generate(model, tok, prompts, stop=[stop], max_new_tokens=12, batch_size=2, quiet=True)
    assert cut[0].text == cut_at_stop(naive[0], [stop])[0] and cut[0].stop_reason == "stop"
    for g, n in zip(cut, naive, strict=True):
        assert g.text == cut_at_stop(n, [stop])[0]


def test_cut_at_stop_takes_the_earliest() -> None:
    assert cut_at_stop("a Question: b\n\nc", ["\n\n", "Question:"]) == ("a ", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)


def test_lm_eval_rows_are_flattened() -> None:
    out = {
        "results": {"pubmedqa": {"alias": "pubmedqa", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                 "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}},
        "n-samples": {"pubmedqa": {"original": 500, "effective": 20}},
    }  # fmt: skip
    rows = results_rows(out, model="m", variant="v")
    wilson = binomtest(10, 20).proportion_ci(method="wilson")
    em = binomtest(5, 20).proportion_ci(method="wilson")
    assert rows == [
        {"model": "m", "variant": "v", "task": "lm-eval:pubmedqa", "metric": "acc", "value": 0.5, "n": 20,
         "stderr": 0.1, "ci_low": pytest.approx(wilson.low), "ci_high": pytest.approx(wilson.high),
         "source": "lm-evaluation-harness"},
        {"model": "m", "variant": "v", "task": "lm-eval:pubmedqa", "metric": "exact_match[strict-match]",
         "value": 0.25, "n": 20, "stderr": None, "ci_low": pytest.approx(em.low), "ci_high": pytest.approx(em.high),
         "source": "lm-evaluation-harness"},
    ]  # fmt: skip
