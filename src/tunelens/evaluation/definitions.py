"""The definition of every number ``tunelens evaluate`` writes (copied into results.json)."""

from __future__ import annotations

from typing import Any

from tunelens.evaluation import exact_match, rouge
from tunelens.evaluation.metrics import BINARY_METRICS, STDERR_DEFINITION
from tunelens.evaluation.stats import StatsOptions

PERPLEXITY_DEFINITION = (
    "mean next-token cross-entropy (nats) over the first `tokens` targets of the held-out documents (text + EOS, "
    "concatenated, rows of seq_len overlapping by one token, no BOS), float64 sum; perplexity = exp(loss)"
)

DEFINITIONS: dict[str, Any] = {
    "loglikelihood": (
        "sum over continuation tokens of log p(token | context, earlier tokens); continuation = "
        "target_delimiter + choice; tokens split as lm-evaluation-harness _encode_pair (enc(ctx + cont) "
        "after len(enc(ctx))); log-softmax in float32, summed in float64"
    ),
    "acc": "1 if argmax_i loglikelihood_i is the gold choice (first maximum on ties), else 0; mean over items",
    "acc_norm": (
        "1 if argmax_i loglikelihood_i / len(choice_i) is the gold choice, len in characters of the choice "
        "string without the delimiter (lm-evaluation-harness 0.4 acc_norm, api/task.py completion_len)"
    ),
    "acc_bytes": (
        "1 if argmax_i loglikelihood_i / len(choice_i.encode('utf-8')) is the gold choice "
        "(lm-evaluation-harness 0.4 acc_bytes, api/task.py byte_length)"
    ),
    "gold_loglik": "multiple choice: loglikelihood of the gold choice (nats, float64; higher is better)",
    "gold_prob": (
        "multiple choice: probability of the gold choice normalised over the choices, "
        "exp(ll_gold - logsumexp_i ll_i) in float64 (no length normalisation; 1/k is chance for k choices)"
    ),
    "gold_margin": (
        "multiple choice: ll_gold - max over wrong choices of ll_i (nats; > 0 exactly when acc = 1, ties aside)"
    ),
    "rouge1": rouge.DEFINITION,
    "exact_match": exact_match.DEFINITION,
    "follow_tags": (
        "1 if the output has exactly one open tag and one close tag, in that order, with non-whitespace "
        "text between them"
    ),
    "follow_answer": (
        "1 if the text after the first close tag (the whole output when there is none) contains the "
        "answer format with its placeholder matched by answer_pattern"
    ),
    "follow_stop": "1 if follow_answer holds and only whitespace follows the first answer-format match",
    "follow_all": "1 if follow_tags, follow_answer and follow_stop all hold (instruction following)",
    "answer_acc": (
        "format tasks: 1 if the answer given in the format equals the gold answer (letter, or number after "
        "the exact_match normalisation), 0 when no answer is given"
    ),
    "loss": (
        "perplexity tasks: " + PERPLEXITY_DEFINITION + "; n = scored tokens, no stderr; samples.jsonl holds each "
        "document's scored tokens and summed loss (nll), each target counted with the document it belongs to"
    ),
    "perplexity": "exp(loss)",
    "value": "mean of the per-item scores over n items (float64); perplexity tasks: the loss over n tokens",
    "stderr": STDERR_DEFINITION,
    "decoding": (
        "greedy (do_sample=False), left-padded batches, stop at an end token, a stop string (text cut "
        "before it) or max_new_tokens"
    ),
}


def interval_definitions(opts: StatsOptions) -> dict[str, str]:
    """``ci_low`` / ``ci_high`` of result rows under ``opts``."""
    pct = f"{100 * opts.level:g}%"
    return {
        "ci_low / ci_high": (
            f"{pct} interval of value: Wilson score interval for 0/1 metrics ({', '.join(sorted(BINARY_METRICS))}); "
            f"percentile bootstrap of the mean over items for continuous metrics ({opts.resamples} resamples of "
            f"the n items with replacement, numpy default_rng(seed={opts.seed})); loss: the same bootstrap over "
            "documents of the token-weighted mean loss (sum of resampled documents' nll / their tokens); "
            "perplexity: exp of the loss interval; lm-eval rows: Wilson for acc / acc_norm / exact_match, else null"
        ),
    }


def item_terms(sample: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per metric, the terms ``(num, den)`` one sample adds to its score ``Σ num / Σ den``: ``(score, 1)``
    for per-item scores, ``(nll, tokens)`` for a held-out document's loss. Null scores are left out."""
    out = {str(m): (float(v), 1.0) for m, v in (sample.get("scores") or {}).items() if v is not None}
    if sample.get("nll") is not None and sample.get("tokens"):
        out["loss"] = (float(sample["nll"]), float(sample["tokens"]))
    return out
