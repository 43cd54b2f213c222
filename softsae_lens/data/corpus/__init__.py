"""Offline real text for training and evaluating SAEs: sources, held-out split, token rows.

* :mod:`softsae_lens.data.corpus.sources`: where the text comes from (Python's own documentation and
  source, plus Debian text when installed), :func:`load_corpus` and :func:`split_documents`.
* :mod:`softsae_lens.data.corpus.stdlib`: rendering the standard library's pydoc pages safely, and
  reading its source files.
* :mod:`softsae_lens.data.corpus.tokens`: :func:`tokenize_corpus`, the pre-tokenised, cached rows
  SAELens trains and evaluates on.
* :mod:`softsae_lens.data.corpus.stream`: how many of those tokens a SAELens run reads, and the
  warnings a pre-tokenised dataset triggers there.
"""

from softsae_lens.data.corpus.sources import (
    FORTUNES_DIR,
    PYTHON_DOC_ROOT,
    SOURCES,
    Corpus,
    fortune_documents,
    load_corpus,
    parse_sources,
    pydoc_documents,
    python_doc_documents,
    split_documents,
    to_hf_dataset,
)
from softsae_lens.data.corpus.stdlib import (
    stdlib_doc_documents,
    stdlib_source_documents,
)
from softsae_lens.data.corpus.stream import (
    pretokenized_warnings_ignored,
    runner_stream_tokens,
    stream_tokens_needed,
)
from softsae_lens.data.corpus.tokens import TokenCorpus, tokenize_corpus, tokenizer_fingerprint

__all__ = [
    "FORTUNES_DIR",
    "PYTHON_DOC_ROOT",
    "SOURCES",
    "Corpus",
    "TokenCorpus",
    "fortune_documents",
    "load_corpus",
    "parse_sources",
    "pydoc_documents",
    "python_doc_documents",
    "runner_stream_tokens",
    "pretokenized_warnings_ignored",
    "split_documents",
    "stdlib_doc_documents",
    "stdlib_source_documents",
    "stream_tokens_needed",
    "to_hf_dataset",
    "tokenize_corpus",
    "tokenizer_fingerprint",
]
