"""Log-likelihood scoring against a naive full-forward reference on tiny float64 models."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.errors import TunelensError
from tunelens.evaluation.mcqa import Question, Scored, encode_pair, mc_scores, score_questions

QUESTIONS = [
    Question("Question: Which organ filters blood?\nAnswer:", ["A", "B", "C"], ["A", "B", "C"], 1),
    Question("The patient presented with fever and a persistent", ["cough", "x"], [" cough", " x"], 0),
    Question("Solve for x: 2x + 3 = 11, so x =", ["4", "5", "12"], [" 4", " 5", " 12"], 0),
    Question("Abnormality of the heart. ", ["Seizures.", "Hypertension is high blood pressure."],
             ["Seizures.", "Hypertension is high blood pressure."], 1),  # trailing space moves into the choice
    Question("def add(a, b):", ["C", "D"], ["C", "D"], 0),
]  # fmt: skip


def load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def reference(model: Any, tok: Any, q: Question, max_len: int) -> Scored:
    """Naive: one unbatched full forward of (ctx + cont)[:-1] per choice, float64, no cache."""
    lls, greedy, ns = [], [], []
    for cont in q.continuations:
        ctx_s, cont_s = q.context, cont
        n = len(ctx_s) - len(ctx_s.rstrip())
        if n:
            ctx_s, cont_s = ctx_s[:-n], ctx_s[-n:] + cont_s
        whole = tok.encode(ctx_s + cont_s)
        c_ids = whole[len(tok.encode(ctx_s)) :]
        inp = whole[-(max_len + 1) :][:-1]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([inp])).logits[0, -len(c_ids) :].double()
        lp = torch.log_softmax(logits, -1)
        tgt = torch.tensor(c_ids)
        lls.append(float(lp.gather(1, tgt[:, None]).sum()))
        greedy.append(bool((lp.argmax(-1) == tgt).all()))
        ns.append(len(c_ids))
    return Scored(lls, greedy, ns)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma2"])
def test_scores_equal_naive_reference(tiny: Callable[..., Path], family: str) -> None:
    model, tok = load(tiny(family))
    got = score_questions(model, tok, QUESTIONS, batch_size=3, quiet=True)
    lengths = [max(len(encode_pair(tok, q.context, c)[1]) for c in q.continuations) for q in QUESTIONS]
    assert 1 in lengths and max(lengths) > 1  # both the one-token path and the shared-prefix path ran
    for q, g in zip(QUESTIONS, got, strict=True):
        ref = reference(model, tok, q, 128)
        assert g.n_tokens == ref.n_tokens
        # Batched, padded float32 forward passes differ from the one-row reference in the last bits of the logits
        # (gemma2's soft-capping amplifies it to ~1e-9 relative); the float64 sums agree to 1e-8 relative.
        assert g.loglikelihoods == pytest.approx(ref.loglikelihoods, rel=1e-8, abs=1e-9)
        assert g.is_greedy == ref.is_greedy


def test_batch_size_does_not_change_scores(tiny: Callable[..., Path]) -> None:
    model, tok = load(tiny("llama"))
    a = score_questions(model, tok, QUESTIONS, batch_size=1, quiet=True)
    b = score_questions(model, tok, QUESTIONS, batch_size=8, quiet=True)
    for x, y in zip(a, b, strict=True):
        assert x.loglikelihoods == pytest.approx(y.loglikelihoods, abs=1e-12)


def test_over_long_context_is_cut_from_the_left_like_lm_eval(tiny: Callable[..., Path]) -> None:
    model, tok = load(tiny("llama"))
    long_ctx = "The patient presented with fever and a persistent cough. " * 30  # > 128 tokens
    qs = [Question(long_ctx.rstrip(), ["A", "B"], ["A", "B"], 0),
          Question(long_ctx.rstrip(), ["cough", "fever"], [" cough", " fever"], 0)]  # fmt: skip
    assert len(tok.encode(long_ctx)) > 128
    for q, g in zip(qs, score_questions(model, tok, qs, quiet=True), strict=True):
        assert g.loglikelihoods == pytest.approx(reference(model, tok, q, 128).loglikelihoods, abs=1e-9)


def test_encode_pair_moves_trailing_space() -> None:
    class Tok:
        bos_token = None
        bos_token_id = None
        eos_token_id = 0

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return [ord(ch) for ch in text]

    assert encode_pair(Tok(), "ab ", "c") == ([97, 98], [32, 99])
    assert encode_pair(Tok(), "", "c") == ([0], [99])


def test_acc_norm_by_characters_and_acc_bytes_by_utf8_bytes() -> None:
    q = Question("ctx", ["éé", "abc"], [" éé", " abc"], 0)
    out = mc_scores(q, Scored([-2.0, -2.9], [False, False], [1, 1]))
    # chars: -2/2 = -1.0 < -2.9/3 ≈ -0.967 → choice 1; bytes: -2/4 = -0.5 > -0.967 → choice 0
    assert (out["pred"], out["pred_norm"], out["pred_bytes"]) == (0, 1, 0)
    assert {k: out["scores"][k] for k in ("acc", "acc_norm", "acc_bytes")} == {
        "acc": 1.0,
        "acc_norm": 0.0,
        "acc_bytes": 1.0,
    }
    tie = mc_scores(Question("c", ["a", "b"], [" a", " b"], 1), Scored([-1.0, -1.0], [True, True], [1, 1]))
    assert tie["pred"] == 0  # first maximum, as numpy.argmax


def test_unsplittable_choice_is_an_error(tiny: Callable[..., Path]) -> None:
    model, tok = load(tiny("llama"))
    with pytest.raises(TunelensError):
        score_questions(model, tok, [Question("ctx", ["", "a"], ["", " a"], 0)], quiet=True)


def test_continuous_gold_scores() -> None:
    """Gold log-likelihood, its probability normalised over the choices (softmax, from scipy), its margin."""
    from scipy.special import softmax

    lls = [-3.25, -1.5, -7.0, -1.75]
    for gold in range(4):
        q = Question("c", list("abcd"), [" a", " b", " c", " d"], gold)
        s = mc_scores(q, Scored(lls, [False] * 4, [1] * 4))["scores"]
        assert s["gold_loglik"] == lls[gold]
        assert s["gold_prob"] == pytest.approx(float(softmax(lls)[gold]), rel=1e-12)
        assert s["gold_margin"] == lls[gold] - max(v for i, v in enumerate(lls) if i != gold)
        assert (s["gold_margin"] > 0) == (s["acc"] == 1.0)
    huge = mc_scores(Question("c", ["a", "b"], [" a", " b"], 0), Scored([-2000.0, -2001.0], [False] * 2, [1, 1]))
    assert huge["scores"]["gold_prob"] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)  # no underflow
