"""The public Python API: one function per command, same names and options as the CLI.

Example:
    >>> import tunelens.api as tl
    >>> result = tl.diff("base/", ["med=ft-med/", "ft-math/"], out="diff-out/")
    >>> result.summary["models"][0]["global"]["cosine"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelens.checkpoints.describe import describe_checkpoint
from tunelens.checkpoints.index import Checkpoint, open_checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.config import ReadOptions, Selection, check_device
from tunelens.provenance import RunClock
from tunelens.records import write_csv, write_json
from tunelens.stats.diff import TENSOR_COLUMNS, DiffResult
from tunelens.stats.diff import diff as _diff
from tunelens.stats.similarity import DEFINITIONS
from tunelens.vectors.write import write_vector

__all__ = [
    "DiffResult", "Selection", "ReadOptions", "diff", "inspect", "open_checkpoint", "vector", "apply", "lora",
    "activations", "subspace", "spectrum", "evaluate", "compare",
]  # fmt: skip


def _open(spec: str | Path | Checkpoint, options: ReadOptions) -> Checkpoint:
    return spec if isinstance(spec, Checkpoint) else open_checkpoint(spec, allow_pickle=options.allow_pickle)


def _open_tuned(
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...], options: ReadOptions, command: str
) -> list[Checkpoint]:
    """Open the TUNED models of ``command``: at least one, names unique."""
    from tunelens.errors import TunelensError

    ts = [_open(t, options) for t in tuned]
    if not ts:
        raise TunelensError(f"{command} needs at least one tuned model or vector")
    names = [t.name for t in ts]
    if len(set(names)) != len(names):
        raise TunelensError(f"model names must be unique, got {names}; name them with name=path")
    return ts


def inspect(model: str | Path | Checkpoint, *, options: ReadOptions | None = None) -> dict[str, Any]:
    """Describe a checkpoint from its headers (architecture, sizes, dtypes, components)."""
    return describe_checkpoint(_open(model, options or ReadOptions()))


def diff(
    base: str | Path | Checkpoint,
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    *,
    out: str | Path | None = None,
    selection: Selection | None = None,
    options: ReadOptions | None = None,
    force: bool = False,
    device: str = "cpu",
) -> DiffResult:
    """Weight cosine / relative change per tensor, component, layer and model, and vector cosine.

    With ``out``, writes ``tensors.csv`` and ``summary.json`` there (DESIGN.md §3). ``device="cuda"``
    computes the sums on a GPU (float32 products, float64 sums there; agrees with CPU to ~1e-12).
    """
    options = options or ReadOptions()
    selection = selection or Selection()
    if out is not None:
        check_target(Path(out), force, inputs=[base, *tuned])
    result: DiffResult = _weight_stage(
        "diff",
        base,
        tuned,
        lambda b, ts: _diff(b, ts, selection=selection, options=options, device=device),
        out=out,
        force=force,
        options=options,
        selection=selection,
        table=("tensors.csv", TENSOR_COLUMNS),
        definitions=DEFINITIONS,
        compute_dtype="float32 products, float64 sums",
        device=device,
        executor=options.executor,
    )
    return result


def _weight_stage(
    what: str,
    base: str | Path | Checkpoint,
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    run: Callable[[Checkpoint, list[Checkpoint]], Any],
    *,
    out: str | Path | None,
    force: bool,
    options: ReadOptions,
    selection: Selection,
    table: tuple[str, tuple[str, ...]],
    definitions: dict[str, str] | None = None,
    **metadata: Any,
) -> Any:
    """Open BASE and TUNED, refuse an empty selection, ``run`` the stage, add the run's metadata to its
    summary and (with ``out``) write the row table and ``summary.json`` — diff, subspace and spectrum."""
    clock = RunClock()
    b = _open(base, options)
    ts = _open_tuned(tuned, options, what)
    selection.check([b, *ts])
    result = run(b, ts)
    result.summary.update(
        clock.metadata(
            [b.describe(), *(t.describe() for t in ts)],
            **({"definitions": definitions} if definitions is not None else {}),
            selection=selection.describe(),
            alignment=result.alignment.report(),
            **metadata,
        )
    )
    if out is not None:
        name, columns = table
        with atomic_dir(Path(out), force=force, inputs=[b, *ts]) as tmp:
            write_csv(tmp / name, result.rows, columns)
            write_json(tmp / "summary.json", result.summary)
    return result


def vector(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    out: str | Path,
    *,
    dtype: str = "float32",
    lora: bool = False,
    rank: int | None = None,
    energy: float | None = None,
    keep_full: bool = False,
    options: ReadOptions | None = None,
    force: bool = False,
) -> Path:
    """Save τ = tuned − base as a sharded safetensors vector folder.

    With ``lora`` (``tunelens vector --lora``), write τ as a PEFT LoRA adapter instead: truncated SVD per
    2-D layer weight at a fixed ``rank`` or an ``energy`` threshold (see :func:`lora`).
    """
    options = options or ReadOptions()
    check_target(Path(out), force, inputs=[base, tuned])
    if lora or rank is not None or energy is not None or keep_full:
        from tunelens.arithmetic.lora import LoraSpec, extract_lora

        spec = LoraSpec(rank=rank, energy=energy)
        b, t = _open(base, options), _open(tuned, options)
        extract_lora(b, t, out, spec, keep_full=keep_full, options=options, force=force)
        return Path(out)
    return write_vector(
        _open(base, options), _open(tuned, options), Path(out), dtype=dtype, options=options, force=force
    )


def apply(
    recipe: Any,
    out: str | Path,
    *,
    options: ReadOptions | None = None,
    force: bool = False,
) -> Any:
    """Write θ = θ_target + Σ λ_i τ_i (a :class:`tunelens.arithmetic.spec.Recipe`, or a YAML recipe path).

    Build a recipe with ``tunelens.arithmetic.spec.build_recipe(base, [parse_vector_spec("ft/:-1")])``.
    Returns an ``ApplyResult`` (``.out``, ``.metadata`` = the written tunelens.json).
    """
    from tunelens.arithmetic.combine import apply_recipe
    from tunelens.arithmetic.spec import Recipe, load_recipe

    options = options or ReadOptions()
    plan = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    base = _open(plan.base, options)
    for term in plan.terms:  # an empty mask is an error before any data is read
        term.selection.check([base])
    return apply_recipe(plan, out, options=options, force=force)


def lora(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    out: str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    keep_full: bool = False,
    options: ReadOptions | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Extract a PEFT LoRA adapter of τ = tuned − base (fixed rank or energy threshold); returns tunelens.json.

    ``keep_full`` stores what a LoRA cannot carry (norms, biases, untied embeddings) whole instead of
    dropping it. ``tunelens vector BASE TUNED --lora`` is the same extraction.
    """
    from tunelens.arithmetic.lora import LoraSpec, extract_lora

    options = options or ReadOptions()
    spec = LoraSpec(rank=rank, energy=energy)
    check_target(Path(out), force, inputs=[base, tuned])
    return extract_lora(
        _open(base, options), _open(tuned, options), out, spec, keep_full=keep_full, options=options, force=force
    )


def activations(
    models: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    *,
    corpus: str | Path | list[str | Path] | None = None,
    out: str | Path | None = None,
    options: Any = None,
    force: bool = False,
) -> Any:
    """Fraction of active FFN neurons per layer of each model on ``corpus`` and the normalised
    distance between the binary activation patterns of every pair (DESIGN.md §1).

    ``options`` is an :class:`tunelens.activations.options.ActivationOptions`; ``corpus`` defaults to
    the bundled HPO medical corpus. Returns an ``ActivationResult`` (``.summary`` is the JSON, ``.rows``
    the CSV rows); with ``out``, writes ``activations.json`` and ``activations.csv`` there.
    """
    from tunelens.activations.loading import open_models
    from tunelens.activations.options import ActivationOptions, definitions
    from tunelens.activations.run import CSV_COLUMNS, run_activations

    options = options or ActivationOptions()
    paths = None if corpus is None else [Path(c) for c in ([corpus] if isinstance(corpus, str | Path) else corpus)]
    if out is not None:
        check_target(Path(out), force, inputs=[*models, *(paths or []), options.tokenizer])
    clock = RunClock()
    cks = open_models(list(models))
    result = run_activations(cks, paths, options)
    result.summary.update(clock.metadata([c.describe() for c in cks], definitions=definitions(options)))
    if out is not None:
        with atomic_dir(Path(out), force=force, inputs=[*cks, *(paths or []), options.tokenizer]) as tmp:
            write_json(tmp / "activations.json", result.summary)
            write_csv(tmp / "activations.csv", result.rows, CSV_COLUMNS)
    return result


def subspace(
    base: str | Path | Checkpoint,
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    *,
    out: str | Path | None = None,
    energy: float | list[float] | tuple[float, ...] | None = None,
    rank_fraction: float | list[float] | tuple[float, ...] | None = None,
    rank: int | list[int] | tuple[int, ...] | None = None,
    per_head: bool = False,
    tau_rank: int = 16,
    tau_spectrum: bool = False,
    method: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    selection: Selection | None = None,
    options: ReadOptions | None = None,
    force: bool = False,
    device: str = "cpu",
) -> Any:
    """Subspace alignment (SSA) of each tuned model's τ with the base's top-k singular subspaces.

    k comes from every given ``energy`` η, ``rank_fraction`` f and ``rank`` k (default η = 0.9), all
    from one decomposition per tensor; the base's decompositions are cached under ``cache_dir``
    (default ``$TUNELENS_CACHE/subspace`` or ``~/.cache/tunelens/subspace``). Returns a
    ``SubspaceResult`` (``.rows`` = ``subspace.csv``, ``.summary`` = ``summary.json``); with ``out``,
    writes both there (DESIGN.md §3).
    """
    from tunelens.stats.subspace import SUBSPACE_COLUMNS, SubspaceOptions
    from tunelens.stats.subspace import subspace as _subspace
    from tunelens.stats.subspace_basis import BasisCache, Criterion, default_cache_dir

    options = options or ReadOptions()
    selection = selection or Selection()
    if out is not None:
        check_target(Path(out), force, inputs=[base, *tuned])

    def values(v: float | list[float] | tuple[float, ...] | list[int] | tuple[int, ...] | None) -> list[float]:
        return [] if v is None else [float(x) for x in (v if isinstance(v, list | tuple) else [v])]

    criteria = [Criterion("energy", x) for x in values(energy)]
    criteria += [Criterion("rank_fraction", x) for x in values(rank_fraction)]
    criteria += [Criterion("rank", x) for x in values(rank)]
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    opts = SubspaceOptions(
        criteria=tuple(criteria) or (Criterion("energy", 0.9),),
        per_head=per_head,
        tau_rank=tau_rank,
        tau_spectrum=tau_spectrum,
        method=method,  # type: ignore[arg-type]  # validated by SubspaceOptions
        cache=BasisCache(folder),
        device=check_device(device),
    )
    return _weight_stage(
        "subspace",
        base,
        tuned,
        lambda b, ts: _subspace(b, ts, selection=selection, read=options, opts=opts),
        out=out,
        force=force,
        options=options,
        selection=selection,
        table=("subspace.csv", SUBSPACE_COLUMNS),
        compute_dtype="basis float64 (U, V used in float32); projections float32, sums float64",
    )


def spectrum(
    base: str | Path | Checkpoint,
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    *,
    out: str | Path | None = None,
    intruder_k: int = 10,
    intruder_eps: float = 0.5,
    amp_rank: int = 16,
    per_head: bool = False,
    method: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    selection: Selection | None = None,
    options: ReadOptions | None = None,
    force: bool = False,
) -> Any:
    """The spectral anatomy of each tuned model's τ per 2-D attention / MLP weight: effective, stable and
    energy ranks, the amplification factor and intruder dimensions (DESIGN.md §6, docs/spectrum.md).

    The base's singular bases come from the cache ``subspace`` uses (``cache_dir``, default
    ``$TUNELENS_CACHE/subspace``). Returns a ``SpectrumResult`` (``.rows`` = ``spectrum.csv``,
    ``.summary`` = ``summary.json``); with ``out``, writes both there.
    """
    from tunelens.stats.spectrum import SPECTRUM_COLUMNS, SpectrumOptions
    from tunelens.stats.spectrum import spectrum as _spectrum
    from tunelens.stats.subspace_basis import BasisCache, default_cache_dir

    options = options or ReadOptions()
    selection = selection or Selection()
    if out is not None:
        check_target(Path(out), force, inputs=[base, *tuned])
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    opts = SpectrumOptions(
        intruder_k=intruder_k,
        intruder_eps=intruder_eps,
        amp_rank=amp_rank,
        per_head=per_head,
        method=method,  # type: ignore[arg-type]  # validated by SpectrumOptions
        cache=BasisCache(folder),
    )
    return _weight_stage(
        "spectrum",
        base,
        tuned,
        lambda b, ts: _spectrum(b, ts, selection=selection, read=options, opts=opts),
        out=out,
        force=force,
        options=options,
        selection=selection,
        table=("spectrum.csv", SPECTRUM_COLUMNS),
        compute_dtype="tau float32; singular values and vectors float64 (Gram products formed in float64)",
    )


def evaluate(
    model: str | Path,
    tasks: list[str] | tuple[str, ...],
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    num_fewshot: int | None = None,
    max_new_tokens: int | None = None,
    chat_template: str | None = None,
    options: Any = None,
    dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
    apply: list[str] | tuple[str, ...] = (),
    sweep: str | list[float] | None = None,
    lm_eval_tasks: list[str] | tuple[str, ...] = (),
    lm_eval_include: str | Path | None = None,
) -> Any:
    """Score ``model`` on ``tasks``; with ``apply`` (and ``sweep``), score ``model + Σ λ τ`` in memory.

    With ``out``, writes ``results.json``, ``results.csv`` and ``samples.jsonl`` there (DESIGN.md §3).
    Returns a :class:`tunelens.evaluation.evaluate.EvalResult`.
    """
    from tunelens.errors import TunelensError
    from tunelens.evaluation.evaluate import evaluate as _evaluate
    from tunelens.evaluation.evaluate import preflight, resolve_tasks
    from tunelens.evaluation.model import load_model
    from tunelens.evaluation.run import RunOptions
    from tunelens.evaluation.variants import edit_variants, parse_sweep

    opts = options or RunOptions()
    if opts.limit is not None and opts.limit < 1:
        raise TunelensError(f"--limit must be at least 1, got {opts.limit}")
    scales = parse_sweep(sweep) if isinstance(sweep, str) or sweep is None else list(sweep)
    if scales and not apply:
        raise TunelensError("--sweep needs at least one --apply term")
    if not tasks and not lm_eval_tasks:
        raise TunelensError("give at least one --task (or --lm-eval-task)")
    if out is not None:
        from tunelens.arithmetic.spec import parse_vector_spec

        check_target(Path(out), force, inputs=[model, *tasks, *(parse_vector_spec(a).path for a in apply)])
    specs = resolve_tasks(  # bad task names / files fail here, before the model is loaded
        list(tasks),
        data_dir=data_dir,
        num_fewshot=num_fewshot,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,  # type: ignore[arg-type]  # validated by TaskSpec
    )
    preflight(specs, opts)  # bad rows, fields and templates fail here too
    lm = load_model(model, dtype=dtype, device=device, quiet=opts.quiet)  # type: ignore[arg-type]  # validated by load_model
    variants = edit_variants(lm, list(apply), scales) or None
    extra = None
    if lm_eval_tasks:
        from tunelens.evaluation.lm_eval_adapter import run_lm_eval

        def extra(lm_: Any, variant: Any) -> list[dict[str, Any]]:
            return run_lm_eval(
                lm_,
                list(lm_eval_tasks),
                variant=variant.name,
                include=lm_eval_include,
                num_fewshot=num_fewshot,
                limit=opts.limit,
                batch_size=opts.batch_size,
            )

    return _evaluate(
        lm,
        specs,
        out=out,
        variants=variants,
        options=opts,
        force=force,
        extra_results=extra,
    )


def compare(
    runs: list[str | Path] | tuple[str | Path, ...],
    *,
    out: str | Path | None = None,
    all_pairs: bool = False,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    force: bool = False,
) -> Any:
    """Paired comparisons of evaluate / study output folders: every model (or variant) against the first one, or
    every pair, on the items they share (matched by task and id). Refuses tasks defined differently.

    With ``out``, writes ``comparisons.csv`` and ``comparisons.json`` there. Returns a
    :class:`tunelens.evaluation.compare.CompareResult` (``.rows``, ``.summary``).
    """
    from tunelens.evaluation.compare import compare_runs, write_comparisons
    from tunelens.evaluation.stats import StatsOptions

    opts = StatsOptions(level=level, resamples=resamples, seed=seed)
    if out is not None:
        check_target(Path(out), force, inputs=runs)
    clock = RunClock()
    result = compare_runs(list(runs), all_pairs=all_pairs, opts=opts)
    result.summary = clock.metadata([], **result.summary)
    if out is not None:
        with atomic_dir(Path(out), force=force, inputs=runs) as tmp:
            write_comparisons(tmp, result)
    return result
