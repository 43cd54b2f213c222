"""Pre-tokenised corpora for SAELens: rows of ``context_size`` token ids, built once, cached.

Handed a ``"text"`` dataset, SAELens's ``ActivationsStore`` tokenises on every run and warns
that the data is not tokenised. :func:`tokenize_corpus` does instead what SAELens's own
``PretokenizeRunner`` does with its defaults (``concat_and_batch_sequences``: BOS first in
every row and between documents, which is also what the store does on the fly with
``prepend_bos=True``, then a seeded shuffle of the rows, its ``shuffle=True``), splits held-out
documents first (by document hash, see
:func:`~softsae_lens.data.corpus.sources.split_documents`), and saves both splits with
``datasets.save_to_disk`` under a key made of the tokenizer, the documents and the context
size, so the work happens once per corpus and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softsae_lens.cache import cache_root as default_cache_root
from softsae_lens.data.corpus.sources import Corpus, split_documents

if TYPE_CHECKING:
    import datasets

__all__ = ["TokenCorpus", "tokenize_corpus", "tokenizer_fingerprint"]

# Bump when the row layout or the cached files change.
# 2: rows are shuffled after packing (see _shuffled_rows).
_FORMAT_VERSION = 2
_META = "meta.json"


@dataclass(frozen=True)
class TokenCorpus:
    """A corpus split into training and held-out rows of token ids.

    Attributes:
        name: the corpus's sources joined with ``+``.
        context_size: tokens per row.
        train: ``datasets.Dataset`` with one ``"tokens"`` column (rows of ``context_size``
            ids): pass it to SAELens as ``override_dataset``.
        heldout: the same for the held-out documents (for ``run_evals``).
        heldout_documents: the held-out texts, in split order (for per-token analyses).
        sources: per source: ``documents``, ``characters``, ``tokens`` (the documents'
            own tokens, before packing), and ``train_tokens`` / ``heldout_tokens``.
        special_tokens: number of special tokens (BOS, EOS, ...) in the training rows, which
            SAELens's ``exclude_special_tokens=True`` drops from the activation stream.
        cache_dir: where the splits are stored (``None`` when caching was off).
    """

    name: str
    context_size: int
    train: datasets.Dataset
    heldout: datasets.Dataset
    heldout_documents: list[str]
    sources: dict[str, dict[str, int]]
    special_tokens: int
    cache_dir: Path | None = None

    @property
    def train_tokens(self) -> int:
        """Token positions in the training rows (special tokens included)."""
        return self.train.num_rows * self.context_size

    @property
    def train_content_tokens(self) -> int:
        """Training tokens left once SAELens drops special tokens from the stream."""
        return self.train_tokens - self.special_tokens

    @property
    def heldout_tokens(self) -> int:
        """Token positions in the held-out rows."""
        return self.heldout.num_rows * self.context_size

    def describe(self) -> str:
        """One line per source plus a total, for logs and reports."""
        lines = [
            f"  {name}: {s['documents']:,} documents, {s['characters']:,} characters, "
            f"{s['tokens']:,} tokens (train {s['train_tokens']:,}, held out {s['heldout_tokens']:,})"
            for name, s in self.sources.items()
        ]
        lines.append(
            f"  total: {self.train.num_rows:,} training rows of {self.context_size} tokens "
            f"({self.train_tokens:,} tokens), {self.heldout.num_rows:,} held-out rows "
            f"({self.heldout_tokens:,} tokens)"
        )
        return "\n".join(lines)

    def check_budget(self, tokens_needed: int, what: str) -> None:
        """Raise if ``tokens_needed`` stream tokens would run past the training split.

        SAELens would silently start a second epoch (warning "All samples in the training
        dataset have been exhausted"), so tokens would be seen twice.
        """
        if tokens_needed > self.train_content_tokens:
            raise ValueError(
                f"{what} needs {tokens_needed:,} tokens but the training split of '{self.name}' "
                f"holds {self.train_content_tokens:,} (special tokens excluded); lower the token "
                "budget or add text (apt-get install fortunes python3.11-doc) so no token is "
                "seen twice"
            )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how ``tokenizer`` splits text."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Padding, truncation and the post-processor (which adds BOS when asked to) do not
        # change how _encode splits text: it never pads, truncates or adds special tokens,
        # and a TransformerLens bridge sets all three on the model's tokenizer.
        for key in ("padding", "truncation", "post_processor"):
            spec.pop(key, None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    specials = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": getattr(tokenizer, "pad_token_id", None),
    }
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def _origins(corpus: Corpus) -> list[str]:
    return corpus.origins or [corpus.name] * len(corpus)


def _cache_key(
    corpus: Corpus, tokenizer: Any, context_size: int, heldout_fraction: float, seed: int
) -> str:
    h = hashlib.sha256(f"v{_FORMAT_VERSION}\0{context_size}\0{heldout_fraction}\0{seed}".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    for doc, origin in zip(corpus.documents, _origins(corpus), strict=True):
        h.update(f"\0{origin}\0".encode())
        h.update(doc.encode())
    return h.hexdigest()[:20]


def _encode(tokenizer: Any, documents: Sequence[str]) -> list[list[int]]:
    # The store tokenises text with prepend_bos=False and adds BOS itself while packing; do
    # the same. Long documents exceed model_max_length on purpose (they are split into rows),
    # so lift the limit for the call instead of letting transformers warn.
    saved = getattr(tokenizer, "model_max_length", None)
    try:
        if saved is not None:
            tokenizer.model_max_length = 1 << 62
        return list(tokenizer(list(documents), add_special_tokens=False)["input_ids"])
    finally:
        if saved is not None:
            tokenizer.model_max_length = saved


def _shuffled_rows(rows: list[list[int]], seed: int, split: str) -> list[list[int]]:
    """``rows`` in a seeded random order.

    Packing keeps a long document's rows together, and SAELens's activation store mixes only
    ``n_batches_in_buffer`` batches, so unshuffled the stream holds stretches of one document
    thousands of tokens long. Anything estimated from a stretch of the stream is then biased:
    SoftSAE's and BatchTopK's inference budgets are estimated over the last steps of the run
    (a 2x sweep whose final 16 steps fell on one plain document set SoftSAE's L0 22% over
    its target), and the first held-out rows ``run_evals`` reads were a handful of
    documents. SAELens's ``PretokenizeRunner`` shuffles its packed rows too (``shuffle=True``)."""
    order = list(range(len(rows)))
    random.Random(f"{seed}\0{split}").shuffle(order)
    return [rows[i] for i in order]


def _pack(token_lists: list[list[int]], context_size: int, bos: int | None) -> list[list[int]]:
    import torch
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rows = concat_and_batch_sequences(
        tokens_iterator=(torch.tensor(t, dtype=torch.long) for t in token_lists if t),
        context_size=context_size,
        begin_batch_token_id=bos,
        sequence_separator_token_id=bos,
    )
    return [row.tolist() for row in rows]


def _build(
    corpus: Corpus,
    tokenizer: Any,
    context_size: int,
    train_docs: list[str],
    heldout_docs: list[str],
    progress: bool,
    seed: int = 0,
) -> tuple[Any, Any, dict[str, dict[str, int]], int]:
    import datasets
    from sae_lens.util import get_special_token_ids
    from tqdm.auto import tqdm

    origin_of = dict(zip(corpus.documents, _origins(corpus), strict=True))
    sources: dict[str, dict[str, int]] = {}
    for doc, origin in origin_of.items():
        entry = sources.setdefault(
            origin,
            {"documents": 0, "characters": 0, "tokens": 0, "train_tokens": 0, "heldout_tokens": 0},
        )
        entry["documents"] += 1
        entry["characters"] += len(doc)
    bos = tokenizer.bos_token_id
    splits = {}
    for split, docs in (("train", train_docs), ("heldout", heldout_docs)):
        token_lists: list[list[int]] = []
        chunk = 64
        for start in tqdm(
            range(0, len(docs), chunk), desc=f"tokenising {split} documents", disable=not progress
        ):
            token_lists.extend(_encode(tokenizer, docs[start : start + chunk]))
        for doc, ids in zip(docs, token_lists, strict=True):
            entry = sources[origin_of[doc]]
            entry["tokens"] += len(ids)
            entry[f"{split}_tokens"] += len(ids)
        rows = _shuffled_rows(_pack(token_lists, context_size, bos), seed, split)
        if not rows:
            raise ValueError(
                f"the {split} split of '{corpus.name}' has fewer than context_size={context_size} "
                "tokens; add documents or lower context_size"
            )
        splits[split] = rows
    special = set(get_special_token_ids(tokenizer))
    n_special = sum(tok in special for row in splits["train"] for tok in row)
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("int64"))})
    built = {
        split: datasets.Dataset.from_dict({"tokens": rows}, features=features)
        for split, rows in splits.items()
    }
    return built["train"], built["heldout"], sources, n_special


def tokenize_corpus(
    corpus: Corpus,
    tokenizer: Any,
    context_size: int = 128,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    cache_root: Path | str | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> TokenCorpus:
    """Split ``corpus`` by document, tokenise it and pack it into rows for SAELens.

    Args:
        corpus: the documents (see :func:`~softsae_lens.data.corpus.sources.load_corpus`).
        tokenizer: the model's Hugging Face tokenizer (``model.tokenizer``).
        context_size: tokens per row; must equal the runner's ``context_size``.
        heldout_fraction: fraction of documents held out (see ``split_documents``).
        seed: decides which documents are held out.
        cache_root: cache root (default ``$SOFTSAE_CACHE`` or ``~/.cache/softsae_lens``); the
            splits go to ``<cache_root>/tokens/<key>/``, the key covering the tokenizer, the
            documents, the split and ``context_size``.
        use_cache: read and write that cache; ``False`` builds in memory only.
        progress: show progress bars while tokenising.

    Returns:
        A :class:`TokenCorpus`; its ``train`` and ``heldout`` rows are packed in the split's
        hashed document order, which mixes the sources together, then shuffled by ``seed`` so
        that no stretch of the stream is one document.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2, got {context_size}")
    if tokenizer is None:
        raise ValueError("tokenizer is None: the model has no tokenizer to pre-tokenise with")
    train_docs, heldout_docs = split_documents(corpus.documents, heldout_fraction, seed)
    if not heldout_docs:
        raise ValueError(
            f"heldout_fraction={heldout_fraction} holds out no document of '{corpus.name}' "
            f"({len(corpus)} documents); raise it"
        )

    def result(train: Any, heldout: Any, meta: dict[str, Any], where: Path | None) -> TokenCorpus:
        return TokenCorpus(
            name=corpus.name,
            context_size=context_size,
            train=train,
            heldout=heldout,
            heldout_documents=heldout_docs,
            sources=meta["sources"],
            special_tokens=meta["special_tokens"],
            cache_dir=where,
        )

    if not use_cache:
        train, heldout, sources, n_special = _build(
            corpus, tokenizer, context_size, train_docs, heldout_docs, progress, seed
        )
        return result(train, heldout, {"sources": sources, "special_tokens": n_special}, None)

    import datasets
    from filelock import FileLock

    key = _cache_key(corpus, tokenizer, context_size, heldout_fraction, seed)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    folder = root / "tokens" / key
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".build.lock")):
        try:
            meta = json.loads((folder / _META).read_text())
            if meta.get("key") != key:
                raise ValueError("stale cache")
        except (OSError, ValueError):
            (folder / _META).unlink(missing_ok=True)
            train, heldout, sources, n_special = _build(
                corpus, tokenizer, context_size, train_docs, heldout_docs, progress, seed
            )
            for split, ds in (("train", train), ("heldout", heldout)):
                shutil.rmtree(folder / split, ignore_errors=True)
                ds.save_to_disk(str(folder / split))
            meta = {
                "key": key,
                "format_version": _FORMAT_VERSION,
                "corpus": corpus.name,
                "context_size": context_size,
                "heldout_fraction": heldout_fraction,
                "seed": seed,
                "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
                "sources": sources,
                "special_tokens": n_special,
            }
            # Written last: a folder without it is an interrupted build and is rebuilt.
            tmp = folder / (_META + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            tmp.replace(folder / _META)
    train = datasets.load_from_disk(str(folder / "train"))
    heldout = datasets.load_from_disk(str(folder / "heldout"))
    return result(train, heldout, meta, folder)
