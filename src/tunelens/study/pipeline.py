"""``tunelens study``: run the configured stages in order into one folder, resumably, then the report.

Layout of the study folder (DESIGN.md §3)::

    DIR/study.json              config, per-stage keys and state, timing (rewritten after each stage)
    DIR/diff/                   tunelens diff BASE TUNED...
    DIR/subspace/               tunelens subspace BASE TUNED...
    DIR/spectrum/               tunelens spectrum BASE TUNED... (after subspace: the base's bases are cached)
    DIR/activations/            tunelens activations BASE TUNED... --corpus ...
    DIR/vectors/<model>/        τ of each tuned model the edits or the sweep use (float32 vector folders)
    DIR/evaluate/<name>/        tunelens evaluate for base, each tuned model, each edit, the sweep
    DIR/comparisons/            paired comparisons of those runs (comparisons.csv, comparisons.json)
    DIR/report.html, figures/   tunelens report DIR

Every stage writes its folder atomically. A stage's *key* is the sha256 of what decides its output
(its config section, the models' paths and input fingerprints); with ``resume`` a stage whose folder
exists and whose key matches the one recorded in ``study.json`` is reused, anything else is rerun.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelens import __version__
from tunelens.checkpoints.output import check_inputs, check_target, mark_output, write_text_atomic
from tunelens.config import ReadOptions, Selection
from tunelens.errors import TunelensError
from tunelens.study.config import Edit, StudyConfig


@dataclass(frozen=True)
class StageRun:
    name: str
    folder: Path
    reused: bool
    seconds: float


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _fingerprint(path: Path) -> str:
    from tunelens.checkpoints.index import open_checkpoint

    return str(open_checkpoint(str(path)).describe()["sha256"])


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(state, indent=2, sort_keys=False, default=str) + "\n")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read the study state ({exc}); use --force to start over") from exc
    if not isinstance(state, dict) or not isinstance(state.get("stages", {}), dict):
        raise TunelensError(f"{path}: not a study state (expected an object with stages); use --force to start over")
    return state


def study_inputs(cfg: StudyConfig) -> list[Path]:
    """What a study reads: its models, corpus files and task files (a study folder never holds them)."""
    tasks = [Path(t) for t in cfg.tasks if Path(t).exists()]
    return [*(m.path for m in cfg.models), *cfg.corpus, *tasks]


def _own_study(out: Path) -> Path:
    """A study folder written before tunelens marked its outputs is recognised by its ``study.json``."""
    try:
        state = json.loads((out / "study.json").read_text())
    except (OSError, ValueError):
        return out
    if isinstance(state, dict) and state.get("kind") == "study" and "tunelens_version" in state:
        mark_output(out, "study")
    return out


def edit_spec(cfg: StudyConfig, edit: Edit, vectors: Path) -> tuple[Path, list[str]]:
    """The model to load and the ``--apply`` terms that evaluate ``edit`` in memory."""
    target = cfg.base_model.path if edit.target == "pre" else next(m.path for m in cfg.tuned if m.name == edit.target)
    return target, [f"{name}={vectors / name}:{lam!r}" for name, lam in edit.terms]


def run_study(
    cfg: StudyConfig,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    report: bool = True,
    log: Callable[[str], None] = lambda s: None,
    inputs: tuple[Path, ...] = (),
) -> list[StageRun]:
    """Run ``cfg``'s stages into ``out``; returns what ran and what was reused.

    ``inputs`` are files read besides the config's own (the study YAML): ``out`` may not hold them."""
    from tunelens import api

    out = Path(out)
    state_path = out / "study.json"
    reads = [*study_inputs(cfg), *inputs]
    check_inputs(out, reads)
    if out.exists():
        if not out.is_dir():
            raise TunelensError(f"{out} exists and is not a folder")
        if force:
            import shutil

            check_target(_own_study(out), force, inputs=reads)
            shutil.rmtree(out)
        elif not resume:
            raise TunelensError(f"{out} already exists; pass --resume to continue that study or --force to replace it")
        elif any(out.iterdir()) and not state_path.exists():
            raise TunelensError(f"{out} is not a tunelens study folder (no study.json); refusing to resume into it")
    state: dict[str, Any] = _read_state(state_path) if state_path.exists() else {}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelensError(f"cannot create {out}: {exc.strerror or exc}") from exc
    mark_output(out, "study")
    state.update(
        tunelens_version=__version__,
        kind="study",
        title=cfg.title,
        config=_config_json(cfg),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    state.setdefault("stages", {})
    fps = {m.name: _fingerprint(m.path) for m in cfg.models}
    state["inputs"] = {m.name: {"path": str(m.path), "sha256": fps[m.name]} for m in cfg.models}
    read = ReadOptions(quiet=quiet)
    base = cfg.base_model
    tuned = tuple(f"{m.name}={m.path}" for m in cfg.tuned)
    runs: list[StageRun] = []

    def stage(name: str, folder: Path, key: str, work: Callable[[Path], object]) -> None:
        rec = state["stages"].get(name, {})
        if folder.exists() and rec.get("folder") == str(folder.relative_to(out)):
            mark_output(folder, "study stage")  # this study's own stage folder, even if written before markers
        if folder.exists() and rec.get("key") == key and rec.get("state") == "done":
            runs.append(StageRun(name, folder, True, 0.0))
            log(f"{name}: reused {folder}")
            return
        log(f"{name}: running → {folder}")
        t0 = time.perf_counter()
        state["stages"][name] = {"key": key, "state": "running", "folder": str(folder.relative_to(out))}
        _write_state(state_path, state)
        work(folder)
        dt = time.perf_counter() - t0
        state["stages"][name] = {"key": key, "state": "done", "folder": str(folder.relative_to(out)), "seconds": dt}
        _write_state(state_path, state)
        runs.append(StageRun(name, folder, False, dt))

    all_fps = [fps[m.name] for m in cfg.models]
    if "diff" in cfg.stages:
        sel = Selection(embeddings=cfg.diff.embeddings)
        stage("diff", out / "diff", _key("diff", asdict(cfg.diff), tuned, all_fps),
              lambda f: api.diff(str(base.path), tuned, out=f, selection=sel, options=read, force=True))  # fmt: skip
    if "subspace" in cfg.stages:
        ss = cfg.subspace
        stage("subspace", out / "subspace", _key("subspace", asdict(ss), tuned, all_fps),
              lambda f: api.subspace(str(base.path), tuned, out=f, energy=list(ss.energy), per_head=ss.per_head,
                                     tau_spectrum=ss.tau_spectrum, options=read, force=True))  # fmt: skip
    if "spectrum" in cfg.stages:
        sp = cfg.spectrum
        stage("spectrum", out / "spectrum", _key("spectrum", asdict(sp), tuned, all_fps),
              lambda f: api.spectrum(str(base.path), tuned, out=f, intruder_k=sp.intruder_k,
                                     intruder_eps=sp.intruder_eps, amp_rank=sp.amp_rank, per_head=sp.per_head,
                                     options=read, force=True))  # fmt: skip
    if "activations" in cfg.stages:
        from tunelens.activations.options import ActivationOptions

        a = cfg.activations
        aopts = ActivationOptions(seq_len=a.seq_len, max_tokens=a.max_tokens, batch_size=a.batch_size,
                                  dtype=a.dtype, quiet=quiet)  # fmt: skip
        corpus: list[str | Path] | None = list(cfg.corpus) or None
        models = (f"{base.name}={base.path}", *tuned)
        stage("activations", out / "activations", _key("activations", asdict(a), models, corpus, all_fps),
              lambda f: api.activations(models, corpus=corpus, out=f, options=aopts, force=True))  # fmt: skip
    if "evaluate" in cfg.stages:
        _evaluate_stages(cfg, out, stage, fps, read, quiet)
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_state(state_path, state)
    if report:
        from tunelens.report.html import build_report

        build_report(out, title=cfg.title)
    return runs


def _evaluate_stages(
    cfg: StudyConfig,
    out: Path,
    stage: Callable[[str, Path, str, Callable[[Path], object]], None],
    fps: dict[str, str],
    read: ReadOptions,
    quiet: bool,
) -> None:
    from tunelens import api
    from tunelens.evaluation.run import RunOptions

    if not cfg.tasks:
        raise TunelensError("study: the evaluate stage needs at least one task (tasks: [...])")
    e = cfg.evaluate
    ropts = RunOptions(batch_size=e.batch_size, limit=e.limit, quiet=quiet)
    common = _key(asdict(e), list(cfg.tasks), [_task_hash(t) for t in cfg.tasks])

    def run_eval(
        model: Path, apply: list[str] | None = None, sweep: list[float] | None = None
    ) -> Callable[[Path], None]:
        def work(f: Path) -> None:
            api.evaluate(str(model), list(cfg.tasks), out=f, options=ropts, max_new_tokens=e.max_new_tokens,
                         apply=apply or (), sweep=sweep, force=True)  # fmt: skip

        return work

    keys: dict[str, str] = {}
    for m in cfg.models:
        keys[m.name] = _key("eval", common, fps[m.name])
        stage(f"evaluate/{m.name}", out / "evaluate" / m.name, keys[m.name], run_eval(m.path))
    used = sorted({n for ed in cfg.edits for n, _ in ed.terms} | ({cfg.sweep.vector} if cfg.sweep else set()))
    vectors = out / "vectors"
    for name in used:
        m = next(t for t in cfg.tuned if t.name == name)
        stage(f"vectors/{name}", vectors / name, _key("vector", fps[cfg.base], fps[name]),
              functools.partial(_vector, cfg.base_model.path, m.path, read=read))  # fmt: skip
    for ed in cfg.edits:
        target, terms = edit_spec(cfg, ed, vectors)
        tfp = fps[cfg.base if ed.target == "pre" else ed.target]
        keys[ed.name] = _key("edit", common, tfp, ed.target, [(n, lam, fps[n]) for n, lam in ed.terms])
        stage(f"evaluate/{ed.name}", out / "evaluate" / ed.name, keys[ed.name], run_eval(target, terms))
    if cfg.sweep is not None:
        sw = cfg.sweep
        name = f"sweep-{sw.vector}"
        keys[name] = _key("sweep", common, fps[cfg.base], fps[sw.vector], list(sw.scales))
        stage(f"evaluate/{name}", out / "evaluate" / name, keys[name],
              run_eval(cfg.base_model.path, [f"{sw.vector}={vectors / sw.vector}"], list(sw.scales)))  # fmt: skip
    from tunelens.evaluation.stats import StatsOptions

    pairs = study_pairs(cfg)
    c = cfg.comparisons
    opts = StatsOptions(c.level, c.resamples, c.seed)
    stage("comparisons", out / "comparisons", _key("comparisons", asdict(c), keys, pairs),
          functools.partial(_comparisons, out / "evaluate", list(keys), pairs, opts))  # fmt: skip


def study_pairs(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Which evaluate runs are compared (a, b): each fine-tune vs the base; each edit vs the model it was made from
    and, when that is not the base, vs the base; each sweep point vs λ = 0 (the sweep's own, else the base, which
    λ = 0 reproduces bit for bit). Names as in comparisons.csv: the run's folder, then the variant for sweeps."""
    from tunelens.evaluation.compare import run_label

    base = cfg.base
    pairs = [(base, m.name) for m in cfg.tuned]
    for ed in cfg.edits:
        made_from = base if ed.target == "pre" else ed.target
        pairs.append((made_from, ed.name))
        if made_from != base:
            pairs.append((base, ed.name))
    if cfg.sweep is not None:
        run = f"sweep-{cfg.sweep.vector}"
        zero = run_label(run, "sweep=0") if 0.0 in cfg.sweep.scales else base
        pairs += [(zero, run_label(run, f"sweep={s:g}")) for s in cfg.sweep.scales if s != 0.0]
    return pairs


def _comparisons(evals: Path, names: list[str], pairs: list[tuple[str, str]], opts: Any, out: Path) -> None:
    from tunelens.checkpoints.output import atomic_dir
    from tunelens.evaluation import compare as cmp
    from tunelens.provenance import RunClock

    clock = RunClock()
    runs = [cmp.read_run(evals / n, n) for n in names]
    cmp.check_same_tasks(runs)
    rows = cmp.compare_all(cmp.pair_scores(runs, pairs), opts)
    summary = clock.metadata(
        [],
        definitions=cmp.definitions(opts),
        statistics={**opts.describe(), "alpha": cmp.ALPHA, "family": "all rows of this file (Holm)"},
        pairs=[list(p) for p in pairs],
        runs=[{"name": r.name, "folder": str(r.folder), "variants": r.variants} for r in runs],
        tasks={t: d for r in runs for t, d in r.tasks.items()},
        comparisons=rows,
    )
    with atomic_dir(out, force=True, inputs=[evals / n for n in names]) as tmp:
        cmp.write_comparisons(tmp, cmp.CompareResult(rows, summary))


def _vector(base: Path, tuned: Path, out: Path, *, read: ReadOptions) -> None:
    from tunelens import api

    api.vector(str(base), str(tuned), out, options=read, force=True)


def _task_hash(task: str) -> str | None:
    p = Path(task)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def _config_json(cfg: StudyConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["edits"] = [{"name": e.name, "target": e.target, "terms": dict(e.terms)} for e in cfg.edits]
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out
