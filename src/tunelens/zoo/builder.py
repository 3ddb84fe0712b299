"""Build or reuse a zoo: base, data split + corpora, tasks, one fine-tune per domain, ``zoo.json``.

Layout of ``<cache_dir>/<name>-<hash>/``::

    base/                 tiny zoos only (SmolLM2 lives in <cache_root>/models/, shared by every zoo)
    data/split.json       per domain: source, licence, split rule, train / held-out ids, digests
    data/corpus/D.jsonl   held-out documents of domain D (a `_header` line, then {"id", "text"})
    tasks/*.yaml|.jsonl   evaluation tasks from held-out items (tunelens evaluate --task tasks/X.yaml)
    base_loss.json        the base model's held-out loss per domain
    <domain>/             fine-tuned HF folder + tunelens.json (recipe, tokens, data, split, losses)
    zoo.json              manifest: spec, paths, held-out loss before / after, this build's timings

Every part is written into a temporary folder and renamed when complete; a part is reused when its
``tunelens.json`` says complete and every file it lists has the recorded size (safetensors headers
checked), otherwise it is rebuilt. Everything but ``zoo.json`` is a deterministic function of the spec.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tunelens import __version__
from tunelens.checkpoints.output import MARKER, atomic_dir, mark_output, write_text_atomic
from tunelens.errors import TunelensError
from tunelens.provenance import peak_rss_bytes
from tunelens.zoo import Zoo, ZooSpec, cache_root, lora_folder
from tunelens.zoo.convert import LICENSE, card_ok, write_card
from tunelens.zoo.data import SPLIT_RULE, Item, Source, data_digest, domain_items, split

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MEDICAL_FORMAT_NOTE = (
    "chat instructions: system = the three-rule prompt of the built-in format_medical task, user = a lettered "
    "4-way 'which HPO term has this definition' question (distractors: other training terms), assistant = "
    "'<think>The definition describes <term>, which is option <L>.</think>\\nAnswer: <L>' then the end-of-turn "
    "token; targets = user + assistant turns (system turn is context only)"
)


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"zoo: {msg}", file=sys.stderr, flush=True)


_ZOO_KINDS = ("base", "data", "tasks", "fine-tune")


def _own(part: Path) -> Path:
    """A stale part of this zoo written before tunelens marked its outputs: recognised by its zoo card
    (``tunelens.json`` of a zoo kind) and marked, so the rebuild may replace it; anything else in the
    cache folder keeps the usual ``--force`` rule."""
    if part.is_dir() and not (part / MARKER).exists():
        try:
            card = json.loads((part / "tunelens.json").read_text())
        except (OSError, ValueError):
            return part
        if isinstance(card, dict) and card.get("kind") in _ZOO_KINDS:
            mark_output(part, "zoo part")
    return part


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "tunelens": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


class _Builder:
    def __init__(self, spec: ZooSpec, root: Path, quiet: bool, force: bool) -> None:
        self.spec, self.root, self.quiet, self.force = spec, root, quiet, force
        self.timings: dict[str, Any] = {}
        self._items: dict[str, tuple[list[Item], list[Item], Source]] = {}

    # ---------------------------------------------------------- helpers
    def stale(self, part: Path) -> bool:
        return self.force or not card_ok(part)

    def items(self, domain: str) -> tuple[list[Item], list[Item], Source]:
        if domain not in self._items:
            items, source = domain_items(domain)
            train, held = split(domain, items, self.spec.holdout)
            self._items[domain] = (train, held, source)
        return self._items[domain]

    def timed(self, name: str, t0: float, built: bool) -> None:
        self.timings[name] = {"built": built, "seconds": round(time.perf_counter() - t0, 2)}

    # ---------------------------------------------------------- base
    def base(self) -> Path:
        t0 = time.perf_counter()
        if self.spec.base == "smollm2":
            from tunelens.zoo.convert import smollm2

            dst = Path(cache_root()) / "models" / "smollm2-135m-instruct"
            built = self.force or not card_ok(dst)
            if built and dst.exists():
                shutil.rmtree(dst)
            path = smollm2(dst.parent, quiet=self.quiet)
            self.timed("base", t0, built)
            return path
        dst = self.root / "base"
        if self.stale(dst):
            _say(self.quiet, f"making a tiny Llama base in {dst}")
            from transformers import AutoTokenizer

            from tunelens.testing import make_tiny

            with atomic_dir(_own(dst), force=True, inputs=()) as tmp:
                make_tiny("llama", tmp, seed=self.spec.seed, max_position_embeddings=max(128, self.spec.seq_len))
                tok = AutoTokenizer.from_pretrained(str(tmp))
                tok.chat_template = TINY_CHAT_TEMPLATE
                tok.save_pretrained(str(tmp))
                card = {
                    "kind": "base",
                    "model": "tiny random Llama (tunelens.testing.make_tiny('llama'))",
                    "seed": self.spec.seed,
                    "license": {"name": "Apache-2.0", "note": "random weights made by tunelens"},
                }
                write_card(tmp, card)
            self.timed("base", t0, True)
        else:
            self.timed("base", t0, False)
        return dst

    # ---------------------------------------------------------- data
    def data(self) -> dict[str, Path]:
        t0 = time.perf_counter()
        dst = self.root / "data"
        corpus = {d: dst / "corpus" / f"{d}.jsonl" for d in self.spec.domains}
        if not self.stale(dst):
            self.timed("data", t0, False)
            return corpus
        _say(self.quiet, "splitting the domain corpora")
        with atomic_dir(_own(dst), force=True, inputs=()) as tmp:
            (tmp / "corpus").mkdir()
            splits: dict[str, Any] = {}
            for d in self.spec.domains:
                train, held, source = self.items(d)
                header = {
                    "_header": f"tunelens zoo held-out {d} corpus: {source.description}",
                    "origin": source.origin,
                    "license": source.license,
                    "attribution": source.attribution,
                    "split": f"{SPLIT_RULE}, holdout={self.spec.holdout}; never trained on",
                }
                lines = [json.dumps(header, ensure_ascii=False)]
                chars = 0
                kept = 0
                for it in held:
                    if chars + len(it.text) > self.spec.corpus_chars and kept:
                        break
                    lines.append(json.dumps({"id": it.id, "text": it.text}, ensure_ascii=False))
                    chars += len(it.text)
                    kept += 1
                header["selection"] = (
                    f"the first {kept} of {len(held)} held-out documents in source order "
                    f"(whole documents up to {self.spec.corpus_chars} characters)"
                )
                lines[0] = json.dumps(header, ensure_ascii=False)
                (tmp / "corpus" / f"{d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
                splits[d] = {
                    "source": source.__dict__,
                    "rule": SPLIT_RULE,
                    "holdout": self.spec.holdout,
                    "unit": "file" if d == "code" else "item id",
                    "train": [it.id for it in train],
                    "heldout": [it.id for it in held],
                    "train_digest": data_digest(train),
                    "heldout_digest": data_digest(held),
                    "corpus_documents": kept,
                }
            (tmp / "split.json").write_text(json.dumps(splits, indent=1, ensure_ascii=False) + "\n")
            files = {f"corpus/{d}.jsonl": (tmp / "corpus" / f"{d}.jsonl").stat().st_size for d in self.spec.domains}
            files["split.json"] = (tmp / "split.json").stat().st_size
            (tmp / "tunelens.json").write_text(json.dumps({"kind": "data", "files": files, "complete": True}) + "\n")
        self.timed("data", t0, True)
        return corpus

    # ---------------------------------------------------------- tasks
    def tasks(self) -> dict[str, Path]:
        from tunelens.zoo.tasks import write_tasks

        t0 = time.perf_counter()
        dst = self.root / "tasks"
        if not self.stale(dst):
            card = json.loads((dst / "tunelens.json").read_text())
            self.timed("tasks", t0, False)
            return {name: dst / t["file"] for name, t in card["tasks"].items()}
        _say(self.quiet, "writing evaluation tasks from the held-out items")
        with atomic_dir(_own(dst), force=True, inputs=()) as tmp:
            held = {d: self.items(d)[1] for d in self.spec.domains}
            tasks = write_tasks(tmp, held, seed=self.spec.seed, eval_items=self.spec.eval_items)
            write_card(tmp, {"kind": "tasks", "tasks": tasks})
        self.timed("tasks", t0, True)
        return {name: dst / t["file"] for name, t in tasks.items()}

    # ---------------------------------------------------------- held-out loss
    def base_loss(self, base: Path) -> dict[str, Any]:
        path = self.root / "base_loss.json"
        key = self.spec.key()
        if path.exists() and not self.force:
            try:
                data = json.loads(path.read_text())
                if data.get("key") == key and set(data["loss"]) == set(self.spec.domains):
                    return dict(data["loss"])
            except (OSError, ValueError, KeyError, AttributeError):
                pass
        t0 = time.perf_counter()
        _say(self.quiet, "measuring the base model's held-out loss")
        model, tok = self._load(base)
        model.to(self.spec.device)
        loss = {d: self._loss(model, tok, d) for d in self.spec.domains}
        del model
        write_text_atomic(path, json.dumps({"key": key, "loss": loss}, indent=1) + "\n")
        self.timed("base_loss", t0, True)
        return loss

    def _load(self, folder: Path) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        return model, tok

    def _loss(self, model: Any, tok: Any, domain: str) -> dict[str, Any]:
        from tunelens.zoo.train import heldout_loss

        held = self.items(domain)[1]
        return heldout_loss(
            model, tok, held, seq_len=self.spec.seq_len, max_tokens=self.spec.eval_tokens, device=self.spec.device
        )

    # ---------------------------------------------------------- fine-tunes
    def tuned(self, domain: str, base: Path, base_loss: dict[str, Any], index: int, *, lora: bool = False) -> Path:
        """The full fine-tune of ``domain`` (``<root>/<domain>/``), or with ``lora`` its PEFT LoRA fine-tune
        on the very same rows (``<root>/<domain>-lora/``, an adapter folder)."""
        part = lora_folder(domain) if lora else domain
        dst = self.root / part
        t0 = time.perf_counter()
        if not self.stale(dst):
            self.timed(part, t0, False)
            return dst
        from tunelens.zoo.train import fine_tune

        s = self.spec
        kind = f"LoRA r={s.lora_rank}" if lora else "full"
        _say(self.quiet, f"fine-tuning {domain}, {kind} ({s.steps} steps x {s.batch_size} x {s.seq_len} tokens)")
        train, held, source = self.items(domain)
        model, tok = self._load(base)
        seed = s.seed * 1000 + index
        packed, data_format = self._rows(domain, tok, seed)
        assert not (packed.item_ids & {it.id for it in held}), "a held-out item reached the training rows"
        if lora:
            from tunelens.zoo.lora import add_lora

            model = add_lora(model, s, seed, base)
        model.to(s.device)
        result = fine_tune(
            model,
            packed,
            steps=s.steps,
            batch_size=s.batch_size,
            lr=s.lora_lr if lora else s.lr,
            warmup=s.warmup,
            lr_floor=s.lr_floor,
            weight_decay=s.weight_decay,
            grad_clip=s.grad_clip,
            seed=seed,
            quiet=self.quiet,
            desc=f"zoo {part}",
            device=s.device,
        )
        losses = {}
        for d in s.domains:
            after = self._loss(model, tok, d)
            losses[d] = {"base": base_loss[d]["loss"], "tuned": after["loss"], "tokens": after["tokens"]}
        model.to("cpu")
        with atomic_dir(_own(dst), force=True, inputs=[base]) as tmp:
            model.save_pretrained(str(tmp))
            if lora:
                (tmp / "README.md").unlink(missing_ok=True)  # PEFT's boilerplate card; tunelens.json is the card
            else:
                skip = ("config.json", "tunelens.json", "model.safetensors.index.json")
                for f in sorted(Path(base).iterdir()):  # tokenizer, chat template, generation config
                    if f.is_file() and not f.name.endswith(".safetensors") and f.name not in skip:
                        shutil.copyfile(f, tmp / f.name)
            base_card = json.loads((Path(base) / "tunelens.json").read_text())
            card = {
                "kind": "lora-adapter" if lora else "fine-tune",
                "domain": domain,
                "parent": {"model": base_card.get("model"), "source": base_card.get("source")},
                "license": LICENSE
                if s.base == "smollm2"
                else base_card.get("license")
                | {"note": "fine-tune of the base; the training data's own licence is under data"},
                "recipe": self._recipe(seed, lora),
                "tokens": {
                    "positions": result.positions,
                    "attended": result.attended,
                    "targets": result.targets,
                    "definition": "positions = steps x batch_size x seq_len; attended = non-padding tokens; "
                    "targets = tokens with a label (loss terms)",
                },
                "data": {
                    "source": source.__dict__,
                    "format": data_format,
                    "packing": "whole examples packed greedily into rows, seeded shuffle per epoch, right padding",
                    "train_items": len(train),
                    "items_seen": packed.items_used,
                    "trained_ids": sorted(packed.item_ids),
                    "epochs": round(packed.epochs, 4),
                    "train_digest": data_digest(train),
                    "split": {
                        "rule": SPLIT_RULE,
                        "holdout": s.holdout,
                        "heldout_items": len(held),
                        "heldout_digest": data_digest(held),
                        "ids": "../data/split.json",
                    },
                },
                "train_loss": [round(x, 6) for x in result.losses],
                "heldout_loss": {"definition": base_loss[s.domains[0]]["definition"], "by_domain": losses},
                "versions": _versions(),
            }
            write_card(tmp, card)
        del model
        self.timings[part] = {
            "built": True,
            "seconds": round(time.perf_counter() - t0, 2),
            "train_seconds": round(result.seconds, 2),
            "seconds_per_step": round(result.seconds / max(1, s.steps), 3),
        }
        return dst

    def _rows(self, domain: str, tok: Any, seed: int) -> tuple[Any, str]:
        """The packed training rows of ``domain`` (a full fine-tune and its LoRA twin get the same ones)."""
        from tunelens.zoo.tasks import medical_messages, medical_rows, system_prompt
        from tunelens.zoo.train import chat_example, pack, text_example

        s = self.spec
        train = self.items(domain)[0]
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        if domain == "medical":
            system, rules = system_prompt()
            rows = medical_rows(train, random.Random(seed))

            def make(i: int) -> Any:
                return chat_example(rows[i]["id"], medical_messages(rows[i], system, rules), tok)

            data_format = MEDICAL_FORMAT_NOTE
        else:

            def make(i: int) -> Any:
                return text_example(train[i], tok)

            data_format = "plain text of each item followed by EOS; every token a target"
        packed = pack(len(train), make, rows=s.steps * s.batch_size, seq_len=s.seq_len, pad_id=pad, seed=seed)
        return packed, data_format

    def _recipe(self, seed: int, lora: bool) -> dict[str, Any]:
        s = self.spec
        recipe: dict[str, Any] = {
            "method": "full-parameter fine-tune (nothing frozen; tied embedding / LM head trained)",
            "optimizer": "torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8)",
            "steps": s.steps,
            "batch_size": s.batch_size,
            "seq_len": s.seq_len,
            "lr": s.lr,
            "schedule": f"linear warm-up {s.warmup} steps, cosine decay to {s.lr_floor} x lr",
            "weight_decay": s.weight_decay,
            "grad_clip": s.grad_clip,
            "seed": seed,
            "dtype": "float32",
            "device": s.device,
            "deterministic": "torch.use_deterministic_algorithms(True), torch.manual_seed(seed)",
            "loss": "mean cross-entropy over the batch's target tokens",
        }
        if lora:
            from tunelens.zoo.lora import lora_recipe

            recipe |= lora_recipe(s)
        return recipe


def _complete(spec: ZooSpec, root: Path, base: Path) -> Zoo | None:
    """The zoo when every part is complete and the manifest exists, else ``None`` (no torch import)."""
    manifest = root / "zoo.json"
    parts = [base, root / "data", root / "tasks", *(root / d for d in spec.domains)]
    parts += [root / lora_folder(d) for d in spec.lora_domains]
    if not manifest.is_file() or not all(card_ok(p) for p in parts):
        return None
    try:
        info = json.loads(manifest.read_text())
        tasks = {n: root / "tasks" / t for n, t in info["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("key") != spec.key() or not all(p.is_file() for p in tasks.values()):
        return None
    corpus = {d: root / "data" / "corpus" / f"{d}.jsonl" for d in spec.domains}
    adapters = {d: root / lora_folder(d) for d in spec.lora_domains}
    return Zoo(root=root, base=base, tuned={d: root / d for d in spec.domains}, adapters=adapters, tasks=tasks,
               corpus=corpus)  # fmt: skip


def build_zoo(spec: ZooSpec, cache_dir: Path, *, quiet: bool = False, force: bool = False) -> Zoo:
    t0 = time.perf_counter()
    root = Path(cache_dir) / spec.folder_name
    base_path = Path(cache_root()) / "models" / "smollm2-135m-instruct" if spec.base == "smollm2" else root / "base"
    if not force:
        done = _complete(spec, root, base_path)
        if done is not None:
            _say(quiet, f"reusing {root}")
            return done
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelensError(f"cannot create the zoo cache folder {root}: {exc.strerror or exc}") from exc
    import torch

    if spec.device != "cpu":
        if not torch.cuda.is_available():
            raise TunelensError(f"zoo device {spec.device}: torch sees no CUDA device (torch {torch.__version__})")
        # deterministic cuBLAS (torch.use_deterministic_algorithms): set before the first CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    root.mkdir(parents=True, exist_ok=True)

    threads = torch.get_num_threads()
    if spec.base == "tiny":
        torch.set_num_threads(1)  # tiny matrices: one thread avoids OpenMP spin-waits on a busy machine
    try:
        return _build(spec, root, quiet, force, t0)
    finally:
        torch.set_num_threads(threads)


def _build(spec: ZooSpec, root: Path, quiet: bool, force: bool, t0: float) -> Zoo:
    b = _Builder(spec, root, quiet, force)
    base = b.base()
    corpus = b.data()
    tasks = b.tasks()
    base_loss = b.base_loss(base)
    tuned = {d: b.tuned(d, base, base_loss, i) for i, d in enumerate(spec.domains)}
    adapters = {d: b.tuned(d, base, base_loss, spec.domains.index(d), lora=True) for d in spec.lora_domains}
    info = {
        "tunelens_version": __version__,
        "spec": spec.key()["spec"],
        "key": spec.key(),
        "root": str(root),
        "base": str(base),
        "tuned": {d: d for d in spec.domains},
        "adapters": {d: lora_folder(d) for d in spec.lora_domains},
        "tasks": {n: str(p.relative_to(root / "tasks")) for n, p in tasks.items()},
        "corpus": {d: str(p.relative_to(root)) for d, p in corpus.items()},
        "heldout_loss": {
            "definition": base_loss[spec.domains[0]]["definition"],
            "rows": "tuned model",
            "columns": "held-out domain",
            "base": {d: base_loss[d]["loss"] for d in spec.domains},
            "tuned": {
                d: json.loads((root / d / "tunelens.json").read_text())["heldout_loss"]["by_domain"]
                for d in spec.domains
            },
            "lora": {
                d: json.loads((root / lora_folder(d) / "tunelens.json").read_text())["heldout_loss"]["by_domain"]
                for d in spec.lora_domains
            },
        },
        "build": {
            "parts": b.timings,
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_bytes": peak_rss_bytes(),
            "threads": _threads(),
            "cpu_count": os.cpu_count(),
            "versions": _versions(),
        },
    }
    write_text_atomic(root / "zoo.json", json.dumps(info, indent=1) + "\n")
    _say(quiet, f"zoo ready in {root} ({info['build']['wall_seconds']} s)")
    return Zoo(root=root, base=base, tuned=tuned, adapters=adapters, tasks=tasks, corpus=corpus)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())
