"""The example's corpus: prose sentences of Python's own documentation, with their sources.

Documents are the topics of ``pydoc_data.topics`` (the language reference behind ``help("if")``)
and the ``pydoc`` pages of the standard-library modules in :data:`MODULES`, rendered in a
separate interpreter by :func:`softsae_lens.data.corpus.stdlib.render_stdlib_docs` (without their
FILE and DATA sections, which hold install paths and reprs of module globals).
:func:`split_sentences` keeps prose only: 4 to 60 words, ending like a sentence, mostly
letters, each sentence once.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from softsae_lens.data.corpus.stdlib import render_stdlib_docs

__all__ = ["MODULES", "REFERENCE", "Sentence", "documents", "split_sentences"]

# Modules whose pydoc pages are mostly prose; importing them has no side effects.
MODULES = [
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gc",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "math",
    "mmap",
    "multiprocessing",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "tomllib",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
]
REFERENCE = "language reference"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
# pydoc's section titles (NAME, DESCRIPTION, MODULE REFERENCE, ...) end a paragraph.
_HEADING = re.compile(r"^[A-Z][A-Z ]+$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class Sentence:
    """One sentence of the corpus and the document it came from."""

    text: str
    source: str  # a pydoc topic's or a module's name
    category: str  # REFERENCE or "library"


def _paragraphs(text: str) -> list[str]:
    lines = [re.sub(r"^[\s|]+", "", line).rstrip() for line in text.splitlines()]
    out, current = [], []
    for line in lines:
        if line and not _HEADING.match(line):
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    letters = sum(c.isalpha() for c in sentence)
    return (
        4 <= len(words) <= 60
        and sentence[-1] in ".!?"
        and letters >= 0.6 * len(sentence)
        and not sentence.startswith((">>>", "..."))
        and sentence[0].isupper()
    )


def documents(progress: bool = True) -> list[tuple[str, str, str]]:
    """``(source, category, text)`` for every pydoc topic and every module in :data:`MODULES`.

    A module whose page cannot be rendered (import error, crash, stall) is left out with a
    warning naming it and why.
    """
    from pydoc_data.topics import topics

    docs = [(name, REFERENCE, text) for name, text in sorted(topics.items())]
    pages, failures = render_stdlib_docs(MODULES, progress=progress)
    if failures:
        warnings.warn(
            "pydoc pages left out of the MiniLM corpus: "
            + "; ".join(f"{name} ({why})" for name, why in sorted(failures.items())),
            stacklevel=2,
        )
    docs += [(name, "library", pages[name]) for name in MODULES if name in pages]
    return docs


def split_sentences(docs: Sequence[tuple[str, str, str]]) -> list[Sentence]:
    """Prose sentences of ``docs``, each text once (first occurrence), in document order."""
    seen: set[str] = set()
    out = []
    for source, category, text in docs:
        for paragraph in _paragraphs(text):
            for sentence in _SENTENCE_END.split(paragraph):
                # Object addresses (pydoc prints default values) change from run to run.
                sentence = _ADDRESS.sub("", re.sub(r"\s+", " ", sentence)).strip()
                if _is_prose(sentence) and sentence not in seen:
                    seen.add(sentence)
                    out.append(Sentence(sentence, source, category))
    return out
