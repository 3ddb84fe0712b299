"""Corpus reading, tokenizing once and packing into sequences, against a naive re-implementation."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunelens.activations.bundled import bundled_corpus, obo_definition
from tunelens.activations.corpus import find_files, tokenize
from tunelens.activations.options import ActivationOptions
from tunelens.checkpoints.causal_lm import load_tokenizer
from tunelens.errors import TunelensError


@pytest.fixture(scope="module")
def tok(tiny: Callable[..., Path]) -> Any:
    return load_tokenizer((tiny("llama"), {}))


def _naive_sequences(tok: Any, docs: list[str], seq_len: int, bos: bool, limit: int | None = None) -> list[list[int]]:
    stream: list[int] = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = stream[:limit]
    cap = seq_len - 1 if bos else seq_len
    return [([tok.bos_token_id] if bos else []) + stream[i : i + cap] for i in range(0, len(stream), cap)]


def _flatten(corpus: Any) -> tuple[list[list[int]], list[int]]:
    seqs, skips = [], []
    for b in corpus.batches():
        for row in b.input_ids.tolist():
            seqs.append(row)
            skips.append(b.skip)
    return seqs, skips


DOCS = [f"{i}: The patient presented with fever and cough. Blood pressure was normal." for i in range(9)]


@pytest.mark.parametrize(("bos", "count_bos"), [("auto", False), ("auto", True), ("no", False)])
def test_packing_equals_naive(tok: Any, tmp_path: Path, bos: str, count_bos: bool) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    opts = ActivationOptions(seq_len=16, batch_size=3, bos=bos, count_bos=count_bos)  # type: ignore[arg-type]
    work = tmp_path / "w"
    work.mkdir()
    corpus = tokenize(find_files([p]), tok, opts, work)
    want = _naive_sequences(tok, DOCS, 16, bos != "no")
    seqs, skips = _flatten(corpus)
    assert seqs == want
    assert len(want[-1]) < 16  # the shorter last sequence runs alone, unpadded
    stream = sum(len(s) for s in want) - (len(want) if bos != "no" else 0)
    assert corpus.stream_tokens == stream and corpus.identity["documents"] == len(DOCS)
    expect_skip = 1 if (bos != "no" and not count_bos) else 0
    assert set(skips) == {expect_skip}
    assert corpus.tokens == sum(len(s) - expect_skip for s in want)
    assert corpus.identity["files"][0]["sha256"] and corpus.identity["tokens"] == corpus.tokens


def test_text_folder_and_gzip(tok: Any, tmp_path: Path) -> None:
    folder = tmp_path / "pmc"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(DOCS[1] + "\n" + DOCS[2] + "\n")
    (folder / "a.txt").write_text(DOCS[0])
    with gzip.open(folder / "sub" / "c.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"body": DOCS[3]}) + "\n")
    (folder / "notes.csv").write_text("ignored")
    files = find_files([folder])
    assert [f.name for f in files] == ["a.txt", "b.txt", "c.jsonl.gz"]
    work = tmp_path / "w"
    work.mkdir()
    corpus = tokenize(files, tok, ActivationOptions(seq_len=8, text_field="body"), work)
    docs = [DOCS[0], DOCS[1] + "\n" + DOCS[2] + "\n", DOCS[3]]
    assert _flatten(corpus)[0] == _naive_sequences(tok, docs, 8, True)


def test_max_tokens_truncates_and_says_so(tok: Any, tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    q = tmp_path / "d.txt"
    q.write_text("more text")
    work = tmp_path / "w"
    work.mkdir()
    corpus = tokenize([p, q], tok, ActivationOptions(seq_len=8, max_tokens=30), work)
    assert corpus.stream_tokens == 30 and corpus.identity["truncated_by_max_tokens"]
    assert corpus.identity["files"][1] == {"path": str(q), "used": False}
    want = _naive_sequences(tok, DOCS, 8, True, limit=30)
    assert _flatten(corpus)[0] == want and [len(w) for w in want] == [8, 8, 8, 8, 3]  # 4 x 7 + 2 tokens
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in DOCS]
    starts = np.cumsum([0, *lengths[:-1]])
    assert corpus.identity["documents"] == int((starts < 30).sum()) < len(DOCS)  # docs with a token used
    full = tokenize([p], tok, ActivationOptions(seq_len=8, max_tokens=10**6), work)
    assert not full.identity["truncated_by_max_tokens"] and full.identity["documents"] == len(DOCS)
    cut_text = tokenize([q, p], tok, ActivationOptions(seq_len=8, max_tokens=2), work)
    assert cut_text.identity["documents"] == 1 and cut_text.identity["files"][1]["used"] is False


def test_bad_corpus_input_is_one_clear_error(tok: Any, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "x"}) + "\n")
    with pytest.raises(TunelensError, match=r"bad.jsonl:2: expected an object with a string 'text' field"):
        tokenize([bad], tok, ActivationOptions(), work)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(TunelensError, match="broken.jsonl:1: invalid JSON"):
        tokenize([broken], tok, ActivationOptions(), work)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TunelensError, match="no text"):
        tokenize([empty], tok, ActivationOptions(), work)
    with pytest.raises(TunelensError, match="no such file"):
        find_files([tmp_path / "missing"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(TunelensError, match="holds no .txt / .jsonl"):
        find_files([tmp_path / "nothing"])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TunelensError, match="not UTF-8"):
        tokenize([latin], tok, ActivationOptions(), work)


class _NoBos:
    """The tiny tokenizer without a BOS token (as Qwen's)."""

    bos_token_id = None

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.eos_token_id = tok.eos_token_id

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.tok(*args, **kw)


def test_bos_yes_needs_a_bos_token(tok: Any, tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("text")
    with pytest.raises(TunelensError, match="defines no BOS"):
        tokenize([p], _NoBos(tok), ActivationOptions(bos="yes"), tmp_path)
    corpus = tokenize([p], _NoBos(tok), ActivationOptions(bos="auto"), tmp_path)
    assert corpus.bos_id is None


def test_bundled_corpus_is_attributed_hpo_text(tok: Any, tmp_path: Path) -> None:
    path = bundled_corpus()
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert "Human Phenotype Ontology" in header["attribution"] and header["license"].startswith("https://hpo.jax.org")
    assert header["hpo_release"] == "hp/releases/2025-01-16"
    first = json.loads(lines[1])
    assert first["id"] == "HP:0000002" and first["text"].startswith("Abnormality of body height. Deviation")
    assert len(lines) - 1 == 1029
    corpus = tokenize([path], tok, ActivationOptions(max_tokens=500), tmp_path)
    assert corpus.identity["headers"][0]["_header"].startswith("Human Phenotype Ontology")
    assert corpus.identity["documents"] >= 1


def test_obo_definition_unquotes() -> None:
    assert obo_definition(r'"A \"quoted\" word." [PMID:1]') == 'A "quoted" word.'
    assert obo_definition("no quotes") == ""
