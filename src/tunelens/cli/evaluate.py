"""``tunelens evaluate``: accuracy, acc_norm, ROUGE-1, format compliance and exact match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_EPILOG = """\b
Examples:
  tunelens evaluate base/ -t mmlu_medical -t pubmedqa -o out/eval-base
  tunelens evaluate med=ft-med/ -t mmlu_medical --num-fewshot 5 --limit 100 -o out/eval-med
  tunelens evaluate ft/ -t my_items.jsonl -t my_task.yaml -o out/eval-ft
  tunelens evaluate base/ -t format_medical --apply med=ft-med/:-1 -o out/eval-neg
  tunelens evaluate base/ -t mmlu_medical --apply med=ft-med/ --sweep 0,0.5,1 -o out/sweep

Built-in tasks (`tunelens tasks` lists them; data bundled with tunelens unless --data-dir or
$TUNELENS_DATA names a folder of the same layout): mmlu_medical mmlu_math mmlu_code mmlu_general
pubmedqa pubmedqa_rouge gsm8k format_medical format_gsm8k.
"""


@click.command("evaluate", epilog=_EPILOG)
@click.argument("model")
@click.option("-t", "--task", "tasks", multiple=True, metavar="TASK",
              help="A built-in task name, a task .yaml, or a [name=]file.jsonl (MMLU / PubMedQA / GSM8K rows). "
              "Repeatable.")  # fmt: skip
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Folder holding mmlu/, pubmedqa/, gsm8k/ for built-in tasks (default: $TUNELENS_DATA, else the "
              "copies bundled with tunelens).")  # fmt: skip
@click.option("--num-fewshot", type=click.IntRange(0, 64), help="Few-shot examples per item (default: the task's).")
@click.option("--limit", type=int, help="Score only N items per task, N >= 1 (recorded in results.json).")
@click.option("--sample", "limit_mode", type=click.Choice(["first", "random"]), default="first", show_default=True,
              help="With --limit: the first N items, or N drawn at random with --seed.")  # fmt: skip
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed for --sample random and torch.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1), help="Override the generation budget of every task.")
@click.option("--chat-template", type=click.Choice(["task", "auto", "on", "off"]), default="task", show_default=True,
              help="Apply the tokenizer's chat template: as each task says, if it has one, always, never.")  # fmt: skip
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]), default="float32",
              show_default=True)  # fmt: skip
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: torch's): batches run on up to 4 "
              "worker threads with one torch thread each (docs/evaluate.md, Performance).")  # fmt: skip
@click.option("--apply", "apply_specs", multiple=True, metavar="NAME=PATH[:λ]",
              help="Evaluate MODEL + Σ λ τ in memory (nothing written): PATH is a fine-tuned model (τ = PATH - MODEL) "
              "or a vector folder (its τ); λ defaults to 1. Repeatable.")  # fmt: skip
@click.option(
    "--sweep",
    metavar="λ,λ,...",
    help="With --apply: evaluate every λ of this list (scaling all terms) on the one resident model.",
)
@click.option(
    "--lm-eval-task",
    "lm_eval_tasks",
    multiple=True,
    metavar="NAME",
    help="Also run this lm-evaluation-harness task on the same (edited) model. Repeatable.",
)
@click.option("--lm-eval-include", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of extra lm-eval task YAMLs (local data; nothing is downloaded).")  # fmt: skip
@click.option("--allow-nonfinite", is_flag=True,
              help="Score items whose logits are NaN or infinite as null (default: stop with an error).")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables.")
def evaluate_cmd(model: str, tasks: tuple[str, ...], out: Path, **kw: Any) -> None:
    """Score MODEL on each TASK: accuracy / acc_norm by log-likelihood (as lm-evaluation-harness),
    ROUGE-1 and exact match of greedy generations, and instruction-format compliance.

    Writes results.json (value, n, stderr and a 95% interval per metric, with definitions), results.csv and
    samples.jsonl (every prompt, output or log-likelihoods, and score); with --apply/--sweep variants,
    comparisons.csv (each variant against the first on the same items: difference, interval, p-values).
    """
    from tunelens import api
    from tunelens.checkpoints.causal_lm import transformers_output
    from tunelens.evaluation.run import RunOptions

    options = RunOptions(
        batch_size=kw["batch_size"],
        limit=kw["limit"],
        limit_mode=kw["limit_mode"],
        seed=kw["seed"],
        quiet=kw["quiet"],
        threads=kw["threads"],
        allow_nonfinite=kw["allow_nonfinite"],
    )
    chat = None if kw["chat_template"] == "task" else kw["chat_template"]
    with transformers_output(quiet=kw["quiet"]):
        result = api.evaluate(
            model,
            list(tasks),
            out=out,
            data_dir=kw["data_dir"],
            num_fewshot=kw["num_fewshot"],
            max_new_tokens=kw["max_new_tokens"],
            chat_template=chat,
            options=options,
            dtype=kw["dtype"],
            device=kw["device"],
            force=kw["force"],
            apply=list(kw["apply_specs"]),
            sweep=kw["sweep"],
            lm_eval_tasks=list(kw["lm_eval_tasks"]),
            lm_eval_include=kw["lm_eval_include"],
        )
    if not kw["quiet"]:
        for r in result.results:
            value = f"{r['value']:.4f}" if r["value"] is not None else "-"
            ci = f" [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r.get("ci_low") is not None else ""
            click.echo(f"{r['variant']:>12}  {r['task']:<20} {r['metric']:<14} {value}{ci}  (n={r['n']})")
        from tunelens.cli.compare import change_line
        from tunelens.evaluation.compare import is_change

        for c in result.comparisons:
            if is_change(c):
                click.echo("change: " + change_line(c))
    files = "results.json, results.csv, samples.jsonl" + (", comparisons.csv" if result.comparisons else "")
    click.echo(f"wrote {files} to {out}")
