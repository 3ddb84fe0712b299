"""Task definitions: small YAML files (prompt template, metric, few-shot source) and JSONL data.

A task is a :class:`TaskSpec`. It comes from

- a built-in name (``mmlu_medical``, ``pubmedqa``, ``gsm8k``, ``format_medical``, ...): a YAML file
  packaged in ``tunelens/evaluation/tasks/`` whose relative data paths resolve against the benchmark
  copies bundled in ``tunelens/data/benchmarks/``, or against a folder of the same layout given by the
  user (``--data-dir`` or the ``TUNELENS_DATA`` environment variable);
- a user YAML file (``--task my.yaml``): relative paths resolve against the YAML file's folder;
- a JSONL file (``--task [name=]items.jsonl``): its schema (MMLU, PubMedQA or GSM8K rows) picks the
  packaged template, and ``<stem>.dev.jsonl`` (or ``<stem>.train200.jsonl``) beside a
  ``<stem>.test.jsonl`` file, when present, is its few-shot pool.

Templates are Jinja2 (sandboxed, strict undefined), as in lm-evaluation-harness task YAMLs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from tunelens.data import benchmarks_dir
from tunelens.errors import TunelensError
from tunelens.evaluation.format_checks import FormatRules

TaskKind = Literal["multiple_choice", "generate", "format", "perplexity"]
GenMetric = Literal["rouge1", "exact_match"]
ChoiceStyle = Literal["letters", "text"]
ChatMode = Literal["auto", "on", "off"]
DATA_ENV = "TUNELENS_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task. Templates are Jinja2 strings rendered against one JSONL row."""

    name: str
    kind: TaskKind
    data: Path
    prompt: str
    description: str = ""  # prepended once before the few-shot examples (lm-eval's ``description``)
    choices: ChoiceStyle = "letters"  # letters: " A"/" B"/...; text: the row's choice strings
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot_data: Path | None = None
    num_fewshot: int = 0
    fewshot_match: str | None = None  # few-shot rows must share this field with the row (e.g. subject)
    fewshot_target: str | None = None  # generation tasks: the few-shot answer template
    reference: str | None = None  # generation tasks: the field holding the reference text
    metric: GenMetric | None = None
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    chat_template: ChatMode = "off"
    system: str | None = None  # format tasks: the system prompt (may use {{open_tag}} etc.)
    rules: FormatRules = field(default_factory=FormatRules)
    seq_len: int = 256  # perplexity tasks: row length of the scored token stream
    max_tokens: int = 2048  # perplexity tasks: score the first this-many next-token targets
    source: str = ""  # where the definition came from (recorded in results.json)

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, Any]] = [
            ("kind", self.kind, TaskKind),
            ("choices", self.choices, ChoiceStyle),
            ("chat_template", self.chat_template, ChatMode),
        ]
        if self.metric is not None:
            checks.append(("metric", self.metric, GenMetric))
        for key, value, lit in checks:
            if value not in get_args(lit):
                raise TunelensError(f"task {self.name}: {key} must be one of {', '.join(get_args(lit))}, got {value}")
        for key in ("num_fewshot", "max_new_tokens", "seq_len", "max_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TunelensError(f"task {self.name}: {key} must be an integer, got {value!r}")
        for key in ("prompt", "description", "target_delimiter", "fewshot_delimiter"):
            if not isinstance(getattr(self, key), str):
                raise TunelensError(f"task {self.name}: {key} must be a string, got {getattr(self, key)!r}")
        if not all(isinstance(s, str) for s in self.stop):
            raise TunelensError(f"task {self.name}: stop must be a list of strings, got {list(self.stop)!r}")
        if self.num_fewshot < 0 or self.max_new_tokens < 1:
            raise TunelensError(f"task {self.name}: num_fewshot must be >= 0 and max_new_tokens >= 1")
        if self.kind == "generate" and (self.metric is None or self.reference is None):
            raise TunelensError(f"task {self.name}: a generate task needs `metric` and `reference`")
        if self.kind == "format" and self.system is None:
            raise TunelensError(f"task {self.name}: a format task needs a `system` prompt")
        if self.kind == "perplexity" and (self.seq_len < 2 or self.max_tokens < 1 or self.num_fewshot):
            raise TunelensError(f"task {self.name}: a perplexity task needs seq_len >= 2, max_tokens >= 1, no few-shot")
        if self.num_fewshot > 0 and self.fewshot_data is None:
            raise TunelensError(f"task {self.name}: {self.num_fewshot}-shot needs a few-shot pool (`fewshot_data`)")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else (v.describe() if isinstance(v, FormatRules) else v)
        out["stop"] = list(self.stop)
        return out


BUILTIN = ("mmlu_medical", "mmlu_math", "mmlu_code", "mmlu_general", "pubmedqa", "pubmedqa_rouge", "gsm8k")
BUILTIN_FORMAT = ("format_medical", "format_gsm8k")


def builtin_names() -> tuple[str, ...]:
    return (*BUILTIN, *BUILTIN_FORMAT)


def _packaged(name: str) -> dict[str, Any]:
    text = resources.files("tunelens.evaluation").joinpath("tasks", f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def data_root(data_dir: str | Path | None) -> Path:
    """The folder built-in tasks read from: ``data_dir``, else ``$TUNELENS_DATA``, else the bundled copies."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not root:
        return benchmarks_dir()
    path = Path(root).expanduser()
    if not path.is_dir():
        raise TunelensError(f"data folder {path} does not exist")
    return path


def from_mapping(raw: dict[str, Any], *, base: Path, source: str) -> TaskSpec:
    """Build a :class:`TaskSpec` from a YAML mapping; relative paths resolve against ``base``."""
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TunelensError(f"{source}: unknown task key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    missing = [k for k in ("name", "kind", "data", "prompt") if k not in raw]
    if missing:
        raise TunelensError(f"{source}: missing task key(s) {', '.join(missing)}")
    kw = dict(raw)
    for key in ("data", "fewshot_data"):
        if kw.get(key) is not None:
            p = Path(str(kw[key])).expanduser()
            kw[key] = p if p.is_absolute() else base / p
    if not isinstance(kw["name"], str) or not kw["name"]:
        raise TunelensError(f"{source}: `name` must be a non-empty string, got {kw['name']!r}")
    stop = kw.get("stop") or ()
    if not isinstance(stop, str | list | tuple):
        raise TunelensError(f"{source}: `stop` must be a string or a list of strings, got {stop!r}")
    kw["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    rules = kw.get("rules") or {}
    if not isinstance(rules, dict):
        raise TunelensError(f"{source}: `rules` must be a mapping")
    try:
        kw["rules"] = FormatRules(**rules)
    except TypeError as exc:
        allowed = ", ".join(f.name for f in fields(FormatRules))
        raise TunelensError(f"{source}: `rules` takes the keys {allowed} ({exc})") from exc
    kw["source"] = source
    try:
        return TaskSpec(**kw)
    except TypeError as exc:
        raise TunelensError(f"{source}: {exc}") from exc


def detect_schema(path: Path) -> str:
    """Which packaged template a JSONL file's first row fits: ``mmlu``, ``pubmedqa`` or ``gsm8k``."""
    try:
        with path.open(encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        row = json.loads(first) if first else None
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read a JSON row ({exc})") from exc
    if not isinstance(row, dict):
        raise TunelensError(f"{path}: empty or not a JSONL file of objects")
    keys = set(row)
    if {"question", "context", "choices", "answer"} <= keys:
        return "pubmedqa"
    if {"question", "choices", "answer"} <= keys:
        return "mmlu"
    if {"question", "answer"} <= keys and isinstance(row["answer"], str):
        return "gsm8k"
    raise TunelensError(
        f"{path}: rows with keys {sorted(keys)} fit no known schema (MMLU: question, choices, answer:int; "
        "PubMedQA: question, context, choices, answer; GSM8K: question, solution, answer:str); write a task YAML"
    )


_FEWSHOT_SIBLINGS = {"mmlu": "dev", "pubmedqa": "rest", "gsm8k": "train200"}


def from_jsonl(path: Path, name: str | None) -> TaskSpec:
    schema = detect_schema(path)
    raw = _packaged(f"_{schema}")
    raw["name"] = name or path.name.removesuffix(".jsonl").replace(".", "_")
    raw["data"] = str(path)
    pool = None
    stem = path.name.removesuffix(".jsonl")
    if stem.endswith(".test"):
        cand = path.with_name(f"{stem.removesuffix('.test')}.{_FEWSHOT_SIBLINGS[schema]}.jsonl")
        pool = str(cand) if cand.exists() else None
    raw["fewshot_data"] = pool
    if pool is None:
        raw["num_fewshot"] = 0
    return from_mapping(raw, base=path.parent, source=f"{path} (schema {schema})")


def resolve_task(spec: str, *, data_dir: str | Path | None = None, num_fewshot: int | None = None) -> TaskSpec:
    """A built-in name, a task YAML, or ``[name=]file.jsonl`` → :class:`TaskSpec`."""
    name, _, rest = spec.partition("=") if "=" in spec and not Path(spec).exists() else (None, "", spec)
    path = Path(rest).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise TunelensError(f"task file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TunelensError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from exc
        if not isinstance(raw, dict):
            raise TunelensError(f"{path}: a task YAML must be a mapping")
        task = from_mapping(raw, base=path.parent, source=str(path))
        task = replace(task, name=name) if name else task
    elif path.suffix == ".jsonl":
        if not path.is_file():
            raise TunelensError(f"task file {path} does not exist")
        task = from_jsonl(path, name)
    elif rest in builtin_names():
        task = from_mapping(_packaged(rest), base=data_root(data_dir), source=f"built-in {rest}")
        task = replace(task, name=name) if name else task
    else:
        raise TunelensError(
            f"unknown task {spec!r}: give a built-in name ({', '.join(builtin_names())}), a task .yaml or a .jsonl file"
        )
    if num_fewshot is not None and task.kind != "format":
        task = replace(task, num_fewshot=num_fewshot)
    for p in (task.data, task.fewshot_data if task.num_fewshot else None):
        if p is not None and not p.is_file():
            raise TunelensError(f"task {task.name}: data file {p} does not exist")
    return task
