"""The recipe: corpus → tokens once → one model at a time → exact counts and pairwise distances.

Only one model is resident at a time. Model 0 stores its bit-packed patterns on disk; model i is
compared token by token with models 0..i-1 while it runs, and stores its own patterns if a later
model needs them: disk use is ``(models - 1) * layers * tokens * ceil(d_ff / 8)`` bytes, plus 4
bytes per token for the token file, in a temporary folder removed at the end (``work_dir``).
``store=False`` keeps fractions only and writes no patterns.
"""

from __future__ import annotations

import gc
import math
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.activations.bundled import bundled_corpus
from tunelens.activations.collect import ModelCounts, collect
from tunelens.activations.compare import QUANTILES, PairSums, require_rapidfuzz
from tunelens.activations.corpus import find_files, tokenize
from tunelens.activations.hooks import find_sites
from tunelens.activations.loading import check_vocab, load_model, resolve_dtype, shared_tokenizer
from tunelens.activations.options import ActivationOptions
from tunelens.activations.store import PatternStore, store_bytes
from tunelens.checkpoints.causal_lm import runs_on
from tunelens.checkpoints.index import Checkpoint
from tunelens.config import check_device
from tunelens.errors import TunelensError
from tunelens.jobs import show_progress

CSV_COLUMNS = ("kind", "name", "a", "b", "layer", "metric", "value")


@dataclass(frozen=True)
class ActivationResult:
    """``summary`` is ``activations.json``; ``rows`` are the long-format rows of ``activations.csv``."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    def to_pandas(self) -> Any:
        """Tidy pandas frames of this result, equal to ``tunelens.load`` of its output folder."""
        from tunelens.frames import activations_results

        return activations_results(self.summary)


def run_activations(
    models: list[Checkpoint], corpus_paths: list[Path] | None, options: ActivationOptions
) -> ActivationResult:
    """Fractions active per layer for every model and distances for every pair (see the module docstring)."""
    if options.distance == "levenshtein" and options.store and len(models) > 1:
        require_rapidfuzz()
    check_device(options.device)
    files = find_files(list(corpus_paths) if corpus_paths else [bundled_corpus()])
    tokenizer, tokenizer_info = shared_tokenizer(models, options)
    dtype = resolve_dtype(options, models[0])
    stored = options.store and len(models) > 1
    if stored:
        _check_same_shape(models)
    counts: list[ModelCounts] = []
    pairs: list[PairSums] = []
    with _work_dir(options.work_dir) as work, _hf_progress(show_progress(options.quiet)):
        corpus = tokenize(files, tokenizer, options, work)
        check_vocab(models, corpus.max_id)
        _check_positions(models, options.seq_len)
        stores: list[tuple[str, PatternStore]] = []
        try:
            for i, ck in enumerate(models):
                model = load_model(ck, dtype, options.device)
                layers, d_ff = _shape(model, options)
                if stores and (layers, d_ff) != (stores[0][1].layers, stores[0][1].d_ff):
                    raise TunelensError(
                        f"{ck.name} has {layers} layers of width {d_ff}, {stores[0][0]} has "
                        f"{stores[0][1].layers} of width {stores[0][1].d_ff}; patterns cannot be compared"
                    )
                if stored and i == 0:
                    _check_disk((len(models) - 1) * store_bytes(layers, corpus.tokens, d_ff), d_ff, work)
                new = tuple(PairSums(n, ck.name, options.distance, layers, d_ff) for n, _ in stores)
                own = None
                if stored and i < len(models) - 1:
                    own = PatternStore(work / f"patterns-{i}.u8", layers, corpus.tokens, d_ff)
                    stores.append((ck.name, own))
                counts.append(
                    collect(
                        model,
                        ck.name,
                        corpus,
                        pattern=options.pattern,
                        own=own,
                        refs=tuple(s for _, s in stores[: len(new)]),
                        pairs=new,
                        quiet=options.quiet,
                        allow_nonfinite=options.allow_nonfinite,
                    )
                )
                pairs.extend(new)
                alive = weakref.ref(model)
                del model  # freed here by reference counting; a full gc only if something cycles back to it
                if alive() is not None and i < len(models) - 1:
                    gc.collect()
                if options.device.startswith("cuda"):
                    torch.cuda.empty_cache()
        except OSError as exc:
            raise TunelensError(f"writing activation patterns under {work} failed: {exc.strerror or exc}") from exc
        finally:
            for _, s in stores:
                s.close()
        pattern_bytes = sum(s.path.stat().st_size for _, s in stores)
        token_bytes = corpus.path.stat().st_size
    _warn_nonfinite(counts)
    order = {ck.name: i for i, ck in enumerate(models)}
    pairs.sort(key=lambda p: (order[p.a], order[p.b]))
    summary: dict[str, Any] = {
        "models": [{**c.summary(), "path": str(ck.path)} for c, ck in zip(counts, models, strict=True)],
        "pairs": [_null_nonfinite(p.summary(), counts) for p in pairs],
        "corpus": corpus.identity,
        "tokenizer": tokenizer_info,
        "dtype": dtype,
        "device": options.device,
        "pattern": options.pattern,
        "distance_metric": options.distance,
        "options": options.describe(),
        "pattern_store": {
            "stored": stored,
            "stored_models": [n for n, _ in stores],
            "bytes_per_token_per_layer": (counts[0].d_ff + 7) // 8,
            "pattern_bytes": pattern_bytes,
            "token_file_bytes": token_bytes,
            "disk_bytes": pattern_bytes + token_bytes,
            "layout": "one raw uint8 file per stored model, shape (layers, tokens, ceil(d_ff / 8)), "
            "np.packbits bit order (most significant bit first); in a temporary folder removed at the end",
        },
    }
    return ActivationResult(summary, long_rows(summary))


def _null_nonfinite(pair: dict[str, Any], counts: list[ModelCounts]) -> dict[str, Any]:
    """With ``--allow-nonfinite``: a pair's per-layer values where either model had NaN / Inf activations,
    and the means over layers, become NaN (null in JSON, empty in CSV); the run warns once per pair."""
    bad_of = {c.name: c.nonfinite or (0,) * c.layers for c in counts}
    bad = [i for i, (x, y) in enumerate(zip(bad_of[pair["a"]], bad_of[pair["b"]], strict=True)) if x or y]
    if not bad:
        return pair
    out = dict(pair)
    for key, values in pair.items():
        if isinstance(values, list) and len(values) == len(bad_of[pair["a"]]):
            out[key] = [math.nan if i in bad else v for i, v in enumerate(values)]
    out["sums"] = {k: [None if i in bad else v for i, v in enumerate(vs)] for k, vs in pair["sums"].items()}
    out["mean"] = out["hamming_mean"] = math.nan
    return out


def _warn_nonfinite(counts: list[ModelCounts]) -> None:
    for c in counts:
        bad = [i for i, n in enumerate(c.nonfinite) if n]
        if bad:
            warnings.warn(
                f"{c.name}: {sum(c.nonfinite)} non-finite (NaN/Inf) MLP activations in layer(s) "
                f"{', '.join(map(str, bad))}; those layers' numbers and the means over layers are null "
                "(--allow-nonfinite)",
                stacklevel=3,
            )


def long_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """``activations.csv``: one row per model or pair, layer and metric; ``layer`` empty = mean over layers."""
    rows: list[dict[str, Any]] = []
    for m in summary["models"]:
        for layer, v in enumerate(m["fraction_active"]):
            rows.append({"kind": "model", "name": m["name"], "layer": layer, "metric": "fraction_active", "value": v})
        rows.append({"kind": "model", "name": m["name"], "layer": "", "metric": "fraction_active", "value": m["mean"]})
    metrics = ["distance", "hamming", *(f"distance_p{round(q * 100)}" for q in QUANTILES), "distance_max"]
    for p in summary["pairs"]:
        base = {"kind": "pair", "name": f"{p['a']} vs {p['b']}", "a": p["a"], "b": p["b"]}
        for metric in metrics:
            for layer, v in enumerate(p[metric]):
                rows.append({**base, "layer": layer, "metric": metric, "value": v})
        rows.append({**base, "layer": "", "metric": "distance", "value": p["mean"]})
        rows.append({**base, "layer": "", "metric": "hamming", "value": p["hamming_mean"]})
    return rows


def _shape(model: torch.nn.Module, options: ActivationOptions) -> tuple[int, int]:
    sites, d_ff = find_sites(model, options.pattern)
    return len(sites), d_ff


def _check_same_shape(models: list[Checkpoint]) -> None:
    first = runs_on(models[0]).arch
    for ck in models[1:]:
        a = runs_on(ck).arch
        if (a.num_layers, a.intermediate_size) != (first.num_layers, first.intermediate_size):
            raise TunelensError(
                f"{ck.name} has {a.num_layers} layers of MLP width {a.intermediate_size}, {models[0].name} has "
                f"{first.num_layers} of width {first.intermediate_size}; patterns can only be compared within "
                "one architecture (use --no-store for fractions only)"
            )


def _check_positions(models: list[Checkpoint], seq_len: int) -> None:
    for ck in models:
        config = runs_on(ck).config
        limit = config.get("max_position_embeddings") or config.get("n_positions")
        if isinstance(limit, int) and seq_len > limit:
            raise TunelensError(f"--seq-len {seq_len} exceeds {ck.name}'s {limit} positions")


def _check_disk(need: int, d_ff: int, work: Path) -> None:
    """Refuse before the first forward when the packed patterns would not fit in ``work``."""
    free = shutil.disk_usage(work).free
    if need > free:
        raise TunelensError(
            f"the activation patterns need {need / 1e9:.2f} GB in {work} ({(d_ff + 7) // 8} bytes "
            f"per token per layer per stored model), only {free / 1e9:.2f} GB are free; use --work-dir, "
            "--max-tokens or --no-store"
        )


@contextmanager
def _work_dir(parent: Path | None) -> Iterator[Path]:
    if parent is not None:
        try:
            Path(parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TunelensError(f"--work-dir {parent}: cannot create it ({exc.strerror})") from exc
    with tempfile.TemporaryDirectory(prefix="tunelens-act-", dir=parent) as tmp:
        yield Path(tmp)


@contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """transformers' own loading bars follow ours: only on a TTY and never with --quiet."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
