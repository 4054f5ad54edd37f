"""The model catalogue and the one function that names a variant's queue.

A variant is a model plus a quantization. Every host derives the same queue name from the
same variant, so a submit on one machine reaches the workers pinned to it on another.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batchq.errors import NotFound

QUANTIZATIONS = ("none", "int8", "nf4")


@dataclass(frozen=True)
class CatalogueEntry:
    alias: str
    hf_id: str
    context: int
    recommended_quant: str


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", 32768, "none"),
    CatalogueEntry("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 32768, "none"),
    CatalogueEntry("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", 32768, "none"),
    CatalogueEntry("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 32768, "nf4"),
    CatalogueEntry("qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct", 32768,
                   "none"),
    CatalogueEntry("qwen2.5-coder-7b-instruct", "Qwen/Qwen2.5-Coder-7B-Instruct", 32768, "nf4"),
    CatalogueEntry("qwen2.5-math-1.5b-instruct", "Qwen/Qwen2.5-Math-1.5B-Instruct", 4096, "none"),
    CatalogueEntry("qwen2.5-math-7b-instruct", "Qwen/Qwen2.5-Math-7B-Instruct", 4096, "nf4"),
    CatalogueEntry("qwen3-0.6b", "Qwen/Qwen3-0.6B", 40960, "none"),
    CatalogueEntry("qwen3-1.7b", "Qwen/Qwen3-1.7B", 40960, "none"),
    CatalogueEntry("qwen3-4b", "Qwen/Qwen3-4B", 40960, "none"),
    CatalogueEntry("qwen3-8b", "Qwen/Qwen3-8B", 40960, "nf4"),
)

_BY_ALIAS = {e.alias: e for e in CATALOGUE}
_BY_HF_ID = {e.hf_id.lower(): e for e in CATALOGUE}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Variant:
    """What a worker is pinned to and a job is routed by."""

    model: str  # what from_pretrained loads: a Hugging Face id or an absolute local path
    quant: str
    slug: str  # stable, host-independent name of the model
    entry: CatalogueEntry | None = None

    @property
    def queue(self) -> str:
        return queue_name(self.slug, self.quant)


def queue_name(slug: str, quant: str) -> str:
    """The single definition of a variant's Celery queue name."""
    return f"batchq.{slug}.{quant}"


def variant_name(queue: str) -> str:
    """`slug/quant` from a queue name, the inverse of queue_name, for labels people read."""
    slug, _, quant = queue.removeprefix("batchq.").rpartition(".")
    return f"{slug}/{quant}"


def _local_slug(path: Path) -> str:
    # A directory's path differs between hosts; its name plus a digest of its config does not,
    # so copies of the same model on several hosts share one queue.
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9.-]+", "-", path.name.lower()).strip("-") or "model"
    return f"local-{name}-{digest}"


def resolve(model: str, quant: str | None = None,
            aliases: Iterable[tuple[str, str]] = ()) -> Variant:
    """Turn what a user typed into a Variant: a catalogue alias, a Hugging Face id or a
    directory, optionally followed by `:QUANT` (`qwen2.5-7b-instruct:nf4`), or a name that
    `aliases` (BATCHQ_MODEL_ALIASES) maps to one of those.

    Raises NotFound with a one-line reason for an unknown alias or a missing directory.
    """
    key = dict(aliases).get(model.strip(), model).strip()
    base, sep, spelled = key.rpartition(":")
    if sep and base and spelled in QUANTIZATIONS:
        if quant is not None and quant != spelled:
            raise NotFound(f"model {model!r} names quantization {spelled}, but {quant} was "
                           "asked for; give one of them")
        key, quant = base, spelled
    if quant is not None and quant not in QUANTIZATIONS:
        raise NotFound(f"unknown quantization {quant!r}: choose one of {', '.join(QUANTIZATIONS)}")
    entry = _BY_ALIAS.get(key.lower()) or _BY_HF_ID.get(key.lower())
    if entry is not None:
        return Variant(entry.hf_id, quant or entry.recommended_quant, entry.alias, entry)
    path = Path(key).expanduser()
    looks_like_path = key.startswith((".", "/", "~")) or path.exists() or not _HF_ID.match(key)
    if looks_like_path:
        if not path.is_dir():
            hint = "" if "/" in key else " (`batchq models` lists the aliases)"
            raise NotFound(f"model {key!r} is neither a catalogue alias nor an existing directory{hint}")
        if not (path / "config.json").is_file():
            raise NotFound(f"model directory {str(path)!r} has no config.json")
        return Variant(str(path.resolve()), quant or "none", _local_slug(path.resolve()))
    slug = re.sub(r"[^a-z0-9._-]+", "-", key.lower().replace("/", "--"))
    return Variant(key, quant or "none", slug)
