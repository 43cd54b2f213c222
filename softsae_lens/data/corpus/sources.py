"""Real text that no one in this project wrote, available offline, and its held-out split.

Five sources, each used when present:

* ``"pydoc"``: Python's own ``pydoc_data.topics`` (the text behind ``help("if")`` and friends,
  ~0.46M characters, one document per topic). Part of the standard library, so always present.
* ``"stdlib-doc"``: ``pydoc``'s plain-text page of every public standard-library module that
  imports cleanly (~210 modules, ~5M characters); always present (see
  :mod:`softsae_lens.data.corpus.stdlib`; rendered once, then cached).
* ``"stdlib-src"``: the standard library's own ``.py`` files, tests excluded (~600 files,
  ~10M characters); always present.
* ``"fortunes"``: Debian's ``fortunes`` package (``/usr/share/games/fortunes``, ~2.5M
  characters, one document per fortune). ``apt-get install fortunes``.
* ``"python-doc"``: the reStructuredText sources of the Python documentation from Debian's
  ``python3.X-doc`` package (``/usr/share/doc/python3.X/html/_sources``, ~11M characters, one
  document per page). ``apt-get install python3.11-doc``.

Documents are whole units (a topic, a module page, a file, a fortune) and are never truncated.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from softsae_lens.data.corpus.stdlib import stdlib_doc_documents, stdlib_source_documents

if TYPE_CHECKING:
    import datasets

__all__ = [
    "FORTUNES_DIR",
    "PYTHON_DOC_ROOT",
    "SOURCES",
    "Corpus",
    "fortune_documents",
    "load_corpus",
    "parse_sources",
    "pydoc_documents",
    "python_doc_documents",
    "split_documents",
    "to_hf_dataset",
]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Debian installs python3.X-doc's page sources here (python3.X-doc/html is a symlink to it).
PYTHON_DOC_ROOT = Path("/usr/share/doc")
SOURCES = ("fortunes", "python-doc", "pydoc", "stdlib-doc", "stdlib-src")

# Lines holding a lone "%" separate fortunes (the strfile format).
_FORTUNE_SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)
# Old fortunes underline or embolden with "char, backspace, char" overstrikes.
_OVERSTRIKE = re.compile(r"[^\x08\n]\x08")
# Any other control character (bells, stray backspaces) is noise to a tokenizer.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


@dataclass(frozen=True)
class Corpus:
    """A list of documents and the names of the sources they came from.

    Attributes:
        name: the sources used, joined with ``+`` in the order they were asked for
            (e.g. ``"pydoc+stdlib-doc+stdlib-src"`` on a machine with no Debian text).
        documents: non-empty, de-duplicated documents, source by source, each in a fixed order.
        origins: the source of each document (same length as ``documents``); empty when the
            corpus was built by hand without them.
    """

    name: str
    documents: list[str]
    origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.origins and len(self.origins) != len(self.documents):
            raise ValueError(
                f"origins has {len(self.origins)} entries but there are "
                f"{len(self.documents)} documents; give one source name per document"
            )

    @property
    def n_chars(self) -> int:
        """Total number of characters over all documents."""
        return sum(len(doc) for doc in self.documents)

    def __len__(self) -> int:
        return len(self.documents)


def _clean(text: str) -> str:
    previous = None
    while previous != text:
        previous, text = text, _OVERSTRIKE.sub("", text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n"))
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def pydoc_documents() -> list[str]:
    """Every topic text of the standard library's ``pydoc_data.topics``, sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def fortune_documents(root: Path = FORTUNES_DIR) -> list[str]:
    """Fortunes from the top-level fortune files in ``root``; ``[]`` if ``root`` is missing.

    Reads regular files only, sorted by name, skipping ``strfile`` indexes (``.dat``) and the
    ``.u8`` symlinks Debian adds. Sub-folders are not read: Debian keeps the offensive
    (``off/``) and other-language collections there.
    """
    if not root.is_dir():
        return []
    documents: list[str] = []
    for path in sorted(root.iterdir()):
        if path.suffix in {".dat", ".u8"} or path.is_symlink() or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        documents.extend(_FORTUNE_SEPARATOR.split(text))
    return documents


def _python_doc_sources(root: Path) -> Path | None:
    found = {
        path.resolve()
        for path in root.glob("python3*/html/_sources")
        if path.is_dir() and any(path.rglob("*.txt"))
    }
    if not found:
        return None
    # The running interpreter's own version first, then the newest.
    own = f"python{sys.version_info.major}.{sys.version_info.minor}"

    def rank(path: Path) -> tuple[bool, tuple[int, ...]]:
        version = re.findall(r"\d+", path.parent.parent.name)
        return (path.parent.parent.name == own, tuple(int(v) for v in version))

    return max(found, key=rank)


def python_doc_documents(root: Path = PYTHON_DOC_ROOT) -> list[str]:
    """Pages of one installed ``python3.X-doc`` package, one document per source file.

    Looks for ``<root>/python3*/html/_sources``; the running interpreter's version wins, then
    the newest. Returns ``[]`` if none is installed. Files are read in sorted path order.
    """
    sources = _python_doc_sources(root)
    if sources is None:
        return []
    return [
        path.read_text(encoding="utf-8", errors="replace")
        for path in sorted(sources.rglob("*.txt"))
        if path.is_file()
    ]


_LOADERS = {
    "fortunes": fortune_documents,
    "python-doc": python_doc_documents,
    "pydoc": pydoc_documents,
    "stdlib-doc": stdlib_doc_documents,
    "stdlib-src": stdlib_source_documents,
}


def load_corpus(prefer: Sequence[str] = SOURCES, min_chars: int = 0) -> Corpus:
    """Load every source in ``prefer`` that is installed on this machine.

    Each document is cleaned (overstrikes and control characters removed, surrounding blank
    space stripped); documents that are then empty or shorter than ``min_chars`` characters are
    dropped, as are exact duplicates (the first copy is kept). Nothing is truncated.

    Args:
        prefer: source names, out of :data:`SOURCES`, in the order their documents should
            appear. Missing sources are skipped; ``Corpus.name`` lists the ones used.
        min_chars: minimum length of a kept document, after cleaning.

    Raises:
        ValueError: for an unknown source name, or a negative ``min_chars``.
        RuntimeError: if none of the requested sources is available.
    """
    if isinstance(prefer, str):
        prefer = (prefer,)
    unknown = [name for name in prefer if name not in _LOADERS]
    if unknown:
        raise ValueError(f"Unknown corpus source(s) {unknown}; choose from {list(SOURCES)}.")
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}.")

    used: list[str] = []
    documents: list[str] = []
    origins: list[str] = []
    seen: set[str] = set()
    for name in dict.fromkeys(prefer):
        kept = 0
        for raw in _LOADERS[name]():
            doc = _clean(raw)
            if not doc.strip() or len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            documents.append(doc)
            origins.append(name)
            kept += 1
        if kept:
            used.append(name)
    if not used:
        raise RuntimeError(
            f"No text found for corpus sources {list(prefer)} (min_chars={min_chars}). "
            "'pydoc', 'stdlib-doc' and 'stdlib-src' need only the Python standard library; "
            "for the others run `apt-get install fortunes python3.11-doc`."
        )
    return Corpus(name="+".join(used), documents=documents, origins=origins)


def parse_sources(text: str) -> tuple[str, ...]:
    """A comma-separated list of :data:`SOURCES` names, for CLI flags (``--sources``).

    Raises:
        argparse.ArgumentTypeError: naming the unknown names and the allowed ones.
    """
    from softsae_lens.flags import names_from

    return names_from(SOURCES, text, "source")


def _split_key(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{text}".encode()).digest()


def split_documents(
    documents: Iterable[str], heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into a training and a held-out list, deterministically.

    Documents are ordered by a hash of ``(seed, text)`` and the first
    ``round(heldout_fraction * n)`` distinct texts are held out, so the split depends only on
    the texts and the seed: not on the input order, the Python hash seed or the machine, and a
    document keeps its side when other sources are added or missing (up to the cut point
    moving). Both lists come back in that hashed order, which also shuffles sources together.
    Identical texts always land on the same side, so the two lists share no document.

    Args:
        documents: the documents to split.
        heldout_fraction: fraction of distinct documents to hold out, in ``[0, 1)``.
        seed: changes which documents are held out.

    Returns:
        ``(train, heldout)``.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    documents = list(documents)
    ranked = sorted(dict.fromkeys(documents), key=lambda text: _split_key(seed, text))
    n_heldout = round(heldout_fraction * len(ranked))
    heldout_set = set(ranked[:n_heldout])
    order = {text: i for i, text in enumerate(ranked)}
    ordered = sorted(documents, key=order.__getitem__)
    train = [doc for doc in ordered if doc not in heldout_set]
    heldout = [doc for doc in ordered if doc in heldout_set]
    return train, heldout


def to_hf_dataset(documents: Iterable[str]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with one ``"text"`` column, e.g. for SAELens's ``override_dataset``."""
    import datasets

    return datasets.Dataset.from_dict({"text": list(documents)})
