"""Malformed options and empty selections: one ``Error:`` line naming what was asked, exit 2, inputs untouched.

Covers every malformed ``-v`` spec, ``--layers``, ``--components``, ``--density``, ``--scale``,
``--energy`` / ``--rank`` / ``--shard-size`` / ``--max-tokens`` out of range and a too-long ``--seq-len``;
a selection that matches nothing is an error in every command that takes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# (command template, extra options, expected error); BASE / FT / OUT / CORPUS are filled in
CASES: list[tuple[str, list[str], str]] = [
    # -v specs
    ("apply", ["-v", ""], "empty vector spec"),
    ("apply", ["-v", "FT:abc"], "λ 'abc' is not a number"),
    ("apply", ["-v", "med=FT:"], "λ '' is not a number"),
    ("apply", ["-v", "FT:nan"], "λ 'nan' is not a number"),
    ("apply", ["-v", "FT:1e400"], "λ 1e400 is not a finite number"),
    ("apply", ["-v", ":1"], "has no path"),
    ("apply", ["-v", "med="], "vector spec 'med=' has no path"),
    ("apply", ["-v", "nope:-1"], "nope: no such file or folder"),
    ("apply", ["-v", "FT", "-v", "FT"], "unique"),
    # --layers / --components / --only
    ("apply", ["-v", "FT", "--layers", "x"], "bad --layers 'x'"),
    ("apply", ["-v", "FT", "--layers", "5-2"], "bad --layers '5-2'"),
    ("apply", ["-v", "FT", "--layers", ","], "names no layer"),
    ("apply", ["-v", "FT", "--layers", "50-60"], "--layers 50-60 not in .* \\(layers 0-2\\)"),
    ("apply", ["-v", "FT", "--components", "foo"], "unknown component 'foo'"),
    ("apply", ["-v", "FT", "--only", "mlpp"], "unknown component 'mlpp'"),
    ("apply", ["-v", "FT", "--components", ","], "names no component"),
    ("apply", ["-v", "FT", "--components", "embed", "--layers", "0"], "keeps no tensor"),
    ("apply", ["-v", "FT", "--only", "attention", "--components", "gate"], "names no component .*none in common"),
    # --density / --method / --scale / --shard-size
    ("apply", ["-v", "FT", "--method", "ties"], "needs --density"),
    ("apply", ["-v", "FT", "--method", "ties", "--density", "0"], "needs --density in \\(0, 1\\]"),
    ("apply", ["-v", "FT", "--method", "dare_ties", "--density", "1.5"], "needs --density in \\(0, 1\\]"),
    ("apply", ["-v", "FT", "--density", "0.5"], "--density only applies"),
    ("apply", ["-v", "FT", "--method", "ties", "--density", "abc"], "Invalid value for '--density'"),
    ("apply", ["-v", "FT", "--scale", "mlp"], "bad --scale 'mlp'"),
    ("apply", ["-v", "FT", "--scale", "mlp=abc"], "bad --scale"),
    ("apply", ["-v", "FT", "--scale", "mlp=inf"], "bad --scale"),
    ("apply", ["-v", "FT", "--scale", "foo=1"], "unknown component 'foo'"),
    ("apply", ["-v", "FT", "--scale", "mlp=1", "--scale", "up=2"], "component up twice"),
    ("apply", ["-v", "FT", "--shard-size", "lots"], "bad size 'lots'"),
    ("apply", ["-v", "FT", "--shard-size", "0"], "must be positive"),
    ("apply", ["-v", "FT", "--shard-size", "-1GB"], "bad size"),
    # diff
    ("diff", ["--layers", "50-60"], "--layers 50-60 not in .* \\(layers 0-2\\)"),
    ("diff", ["--layers", "2-4"], "--layers 3-4 not in"),
    ("diff", ["--components", "foo"], "unknown component 'foo'"),
    ("diff", ["--components", "embed", "--layers", "1"], "--components embed with --layers 1 keeps no tensor"),
    ("diff", ["--components", "embed", "--no-embeddings"], "keeps no tensor"),
    ("diff", ["--workers", "0"], "Invalid value for '--workers'"),
    # subspace
    ("subspace", ["--layers", "50-60"], "--layers 50-60 not in"),
    ("subspace", ["--components", "embed"], "subspace analyses q,k,v,o,gate,up,down only"),
    ("subspace", ["--components", "q", "--layers", "7"], "--layers 7 not in"),
    ("subspace", ["--energy", "0"], "--energy values must be in \\(0, 1\\], got 0.0"),
    ("subspace", ["--energy", "1.5"], "--energy values must be in \\(0, 1\\], got 1.5"),
    ("subspace", ["--energy", "abc"], "bad --energy 'abc'"),
    ("subspace", ["--rank", "0"], "--rank values must be positive integers"),
    ("subspace", ["--rank", "-3"], "--rank values must be positive integers"),
    ("subspace", ["--rank", "1.5"], "bad --rank"),
    ("subspace", ["--rank-fraction", "0"], "--rank-fraction values must be in"),
    ("subspace", ["--rank-fraction", "2"], "--rank-fraction values must be in"),
    ("subspace", ["--tau-rank", "0"], "Invalid value for '--tau-rank'"),
    # vector --lora / lora
    ("lora", ["--rank", "0"], "--rank must be at least 1"),
    ("lora", ["--energy", "0"], "--energy must be in \\(0, 1\\]"),
    ("lora", ["--energy", "1.5"], "--energy must be in \\(0, 1\\]"),
    ("lora", ["--rank", "2", "--energy", "0.9"], "exactly one of --rank R or --energy E"),
    ("lora", [], "exactly one of --rank R or --energy E"),
    ("vector", ["--lora", "--rank", "-1"], "--rank must be at least 1"),
    ("vector", ["--dtype", "int8"], "Invalid value for '--dtype'"),
    # activations
    ("activations", ["--max-tokens", "0"], "--max-tokens must be positive"),
    ("activations", ["--max-tokens", "-5"], "--max-tokens must be positive"),
    ("activations", ["--seq-len", "1"], "--seq-len must be at least 2"),
    ("activations", ["--seq-len", "1000"], "--seq-len 1000 exceeds .* 128 positions"),
    ("activations", ["--batch-size", "0"], "--batch-size must be positive"),
    ("activations", ["--work-dir", "CORPUS"], "--work-dir .*: cannot create it"),
]

HEADS = {
    "apply": ["apply", "BASE"],
    "diff": ["diff", "BASE", "FT"],
    "subspace": ["subspace", "BASE", "FT", "--no-cache"],
    "lora": ["lora", "BASE", "FT"],
    "vector": ["vector", "BASE", "FT"],
    "activations": ["activations", "BASE", "FT", "--corpus", "CORPUS", "--max-tokens", "64", "--seq-len", "16"],
}


@pytest.mark.parametrize(("cmd", "extra", "match"), CASES, ids=[f"{c} {' '.join(e)}" for c, e, _ in CASES])
def test_bad_option(
    cmd: str, extra: list[str], match: str, pair: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any
) -> None:
    base, ft = pair
    fill = {"BASE": str(base), "FT": str(ft), "CORPUS": str(corpus_file)}

    def sub(a: str) -> str:
        for k, v in fill.items():
            a = a.replace(k, v)
        return a

    out = tmp_path / "out"
    args = [sub(a) for a in [*HEADS[cmd], *extra]] + ["-o", str(out), "-q"]
    fault(args, inputs=[base, ft, corpus_file], match=match, out=out)


def test_empty_selection_on_a_tied_model(tiny: Any, tuned: Any, tmp_path: Path, fault: Any) -> None:
    """A tied model stores no lm_head: asking for it names what the model has."""
    base = tiny("llama_tied")
    ft = tuned(base)
    out = tmp_path / "out"
    fault(["diff", base, ft, "--components", "lm_head", "-o", out], inputs=[base, ft],
          match="--components lm_head: .* has none of them \\(it has embed, q", out=out)  # fmt: skip


def test_other_inputs_that_used_to_end_in_a_traceback(pair: tuple[Path, Path], tmp_path: Path, fault: Any) -> None:
    base, ft = pair
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fault(["zoo", "build", "--tiny", "--cache-dir", blocker, "-q"], inputs=[blocker], match="cannot create the zoo")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {base}\nvectors: [{{path: {ft}, scale: .inf}}]\n")
    out = tmp_path / "out"
    fault(["apply", "--recipe", recipe, "-o", out], inputs=[base, ft, recipe], match="scale must be a finite number")
    recipe.write_text(f"base: {base}\nvectors: ['{ft}:abc']\n")
    fault(["apply", "--recipe", recipe, "-o", out], inputs=[base, ft, recipe], match="λ 'abc' is not a number")
    fault(["subspace", base, ft, "--cache-dir", blocker, "-o", out], inputs=[base, ft], match="subspace cache")
