"""Short full-parameter fine-tunes on CPU (fp32, AdamW, seeded), and held-out loss.

**Examples.** math / code: the item's plain text, then EOS; every token is a target. medical: one chat
(system = the three-rule prompt, user = a lettered HPO question, assistant = ``<think>…</think>``
reasoning then ``Answer: X``) rendered with the tokenizer's chat template; the system turn is
context only (label −100), the user and assistant turns are targets.

**Rows.** Training items are taken in a seeded shuffled order (reshuffled each epoch) and packed
greedily, whole examples only, into rows of ``seq_len`` tokens (an example longer than ``seq_len``
is cut into ``seq_len`` pieces); the rest of a row is right padding (attention mask 0, label −100).
Each step takes ``batch_size`` rows.

**Optimizer.** ``torch.optim.AdamW(fused=True)`` (betas 0.9/0.999, eps 1e-8, ``weight_decay``) on every
trainable parameter (a full fine-tune freezes nothing, the tied embedding / LM head included; a LoRA
fine-tune trains its adapters only), linear warm-up over ``warmup`` steps, then cosine decay to
``lr_floor · lr``; gradient norm clipped at ``grad_clip``. Loss = mean cross-entropy over target tokens of
the batch (transformers' causal-LM loss, with the LM head applied to target positions only), float32
throughout. Deterministic algorithms, seeded.

**Held-out loss.** Mean next-token cross-entropy (nats) over the first ``eval_tokens`` target tokens of
a domain's held-out documents (plain text, each followed by EOS, concatenated, cut into rows of
``seq_len``; no padding), summed in float64.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from tunelens.zoo.data import Item


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]  # -100 = context only
    item: str


def text_example(item: Item, tokenizer: Any) -> Example:
    ids = list(tokenizer(item.text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return Example(ids, list(ids), item.id)


def chat_example(item_id: str, messages: list[dict[str, str]], tokenizer: Any) -> Example:
    full = str(tokenizer.apply_chat_template(messages, tokenize=False))
    prefix = str(tokenizer.apply_chat_template(messages[:1], tokenize=False))
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    ctx = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if full.startswith(prefix) else []
    if ids[: len(ctx)] != ctx:
        ctx = []  # the tokenization does not split at the turn boundary: every token is a target
    labels = [-100] * len(ctx) + ids[len(ctx) :]
    return Example(ids, labels, item_id)


@dataclass(frozen=True)
class Packed:
    input_ids: list[list[int]]
    labels: list[list[int]]
    attention: list[list[int]]
    items_used: int
    epochs: float
    item_ids: frozenset[str]


def pack(n_items: int, make: Callable[[int], Example], *, rows: int, seq_len: int, pad_id: int, seed: int) -> Packed:
    """``rows`` rows of whole examples (see the module docstring); ``make(i)`` builds item i's example."""
    rng = random.Random(seed)
    cache: dict[int, Example] = {}

    def stream() -> Iterator[Example]:
        epoch = 0
        while True:
            order = list(range(n_items))
            rng.shuffle(order)
            for i in order:
                if i not in cache:
                    cache[i] = make(i)
                ex = cache[i]
                for s in range(0, len(ex.ids), seq_len):
                    yield Example(ex.ids[s : s + seq_len], ex.labels[s : s + seq_len], ex.item)
            epoch += 1

    out_ids: list[list[int]] = []
    out_lab: list[list[int]] = []
    used: list[str] = []
    it = stream()
    pending: Example | None = None
    while len(out_ids) < rows:
        ids: list[int] = []
        lab: list[int] = []
        while True:
            ex = pending if pending is not None else next(it)
            pending = None
            if len(ids) + len(ex.ids) > seq_len:
                pending = ex
                break
            ids += ex.ids
            lab += ex.labels
            used.append(ex.item)
        out_ids.append(ids)
        out_lab.append(lab)
    attention = [[1] * len(r) + [0] * (seq_len - len(r)) for r in out_ids]
    padded = [r + [pad_id] * (seq_len - len(r)) for r in out_ids]
    labels = [r + [-100] * (seq_len - len(r)) for r in out_lab]
    distinct = frozenset(used)
    return Packed(padded, labels, attention, len(distinct), len(used) / max(1, n_items), distinct)


def lr_at(step: int, *, steps: int, lr: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Deterministic algorithms and a seeded generator. ``fill_uninitialized_memory`` (which deterministic
    mode turns on: every new tensor filled with NaN first, a debugging aid that changes no result) is off:
    it cost ~10% of a training step's CPU time (torch.profiler, ``aten::fill_``)."""
    import torch.utils.deterministic

    prev = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]
    lrs: list[float]
    positions: int  # rows x seq_len
    attended: int  # non-padding tokens
    targets: int  # tokens with a label
    seconds: float


def fine_tune(
    model: Any,
    packed: Packed,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    lr_floor: float,
    weight_decay: float,
    grad_clip: float,
    seed: int,
    quiet: bool,
    desc: str,
    device: str = "cpu",
) -> TrainResult:
    """Train ``model``'s trainable parameters in place on ``packed`` (``steps × batch_size`` rows), on
    ``device``. The LM head runs on target positions only (:func:`target_loss`)."""
    import time

    t0 = time.perf_counter()
    losses: list[float] = []
    lrs: list[float] = []
    with deterministic(seed):
        model.train()
        model.config.use_cache = False
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, fused=True)
        bar = tqdm(range(steps), desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)
        for step in bar:
            sl = slice(step * batch_size, (step + 1) * batch_size)
            ids = torch.tensor(packed.input_ids[sl], dtype=torch.long, device=device)
            labels = torch.tensor(packed.labels[sl], dtype=torch.long, device=device)
            mask = torch.tensor(packed.attention[sl], dtype=torch.long, device=device)
            cur = lr_at(step, steps=steps, lr=lr, warmup=warmup, floor=lr_floor)
            for g in opt.param_groups:
                g["lr"] = cur
            loss = target_loss(model, ids, mask, labels)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            lrs.append(cur)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        model.eval()
        model.config.use_cache = True
    n = steps * batch_size
    return TrainResult(
        losses=losses,
        lrs=lrs,
        positions=n * len(packed.input_ids[0]),
        attended=sum(sum(r) for r in packed.attention[:n]),
        targets=sum(sum(1 for x in r if x != -100) for r in packed.labels[:n]),
        seconds=time.perf_counter() - t0,
    )


def target_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss — mean cross-entropy (float32 logits) of next-token predictions over the
    positions whose shifted label is not −100 — with the LM head applied to those positions only (the
    decoder's hidden states of context and padding positions never reach the vocabulary projection)."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, d]
    shifted = labels[:, 1:]  # [B, T-1]
    keep = shifted != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # [targets, vocab]
    return torch.nn.functional.cross_entropy(logits.float(), shifted[keep])


def heldout_loss(
    model: Any, tokenizer: Any, items: list[Item], *, seq_len: int, max_tokens: int, device: str = "cpu"
) -> dict[str, Any]:
    """Mean next-token cross-entropy over the first ``max_tokens`` targets
    (:func:`tunelens.evaluation.perplexity.heldout_nll`, the same numbers as an evaluate perplexity task)."""
    from tunelens.evaluation.perplexity import heldout_nll

    texts = [it.text for it in items]
    res = heldout_nll(model, tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens, device=device)
    return {k: res[k] for k in ("loss", "tokens", "documents", "definition")}
