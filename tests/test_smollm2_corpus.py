"""Offline plumbing for the demo: real text (corpus.py). The SmolLM2 tests are in test_models.py."""

import os

# Before anything imports huggingface_hub / datasets, which read these once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import re

import pytest

from softsae_lens import corpus
from softsae_lens.corpus import (
    FORTUNES_DIR,
    load_corpus,
    python_doc_documents,
    split_documents,
    to_hf_dataset,
)

# --- corpus -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_corpus():
    return load_corpus()


def test_pydoc_alone_is_a_real_corpus():
    c = load_corpus(("pydoc",))
    assert c.name == "pydoc"
    # ~79 topics, ~0.46M characters on CPython 3.11; identical topics ("if"/"else") collapse.
    assert len(c) > 50
    assert c.n_chars > 300_000
    assert any(doc.startswith('The "for" statement') for doc in c.documents)


def test_default_corpus_uses_what_is_installed_and_always_pydoc(full_corpus):
    sources = full_corpus.name.split("+")
    assert "pydoc" in sources
    assert ("fortunes" in sources) == FORTUNES_DIR.is_dir()
    assert ("python-doc" in sources) == bool(python_doc_documents())
    assert set(load_corpus(("pydoc",)).documents) <= set(full_corpus.documents)


def test_documents_are_clean_unique_and_whole(full_corpus):
    docs = full_corpus.documents
    assert len(set(docs)) == len(docs)
    for doc in docs:
        assert doc.strip()
        assert doc == doc.rstrip()
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", doc)
    if "fortunes" in full_corpus.name:
        # The "%" separator lines must never survive inside a fortune.
        assert not any(re.search(r"^%\s*$", doc, re.MULTILINE) for doc in docs)


def test_min_chars_and_bad_arguments():
    long_only = load_corpus(("pydoc",), min_chars=2_000)
    assert long_only.documents
    assert min(len(doc) for doc in long_only.documents) >= 2_000
    assert len(long_only) < len(load_corpus(("pydoc",)))
    with pytest.raises(ValueError, match="Unknown corpus source"):
        load_corpus(("wikipedia",))
    with pytest.raises(RuntimeError, match="No text found"):
        load_corpus(("pydoc",), min_chars=10**9)


def test_fortune_parsing_when_installed(tmp_path):
    assert corpus.fortune_documents(tmp_path / "missing") == []
    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian 'fortunes' not installed (apt-get install fortunes)")
    c = load_corpus(("fortunes",))
    assert c.name == "fortunes"
    assert len(c) > 10_000


def test_split_is_deterministic_disjoint_and_complete(full_corpus):
    docs = full_corpus.documents
    train, heldout = split_documents(docs, heldout_fraction=0.1, seed=0)
    assert (train, heldout) == split_documents(docs, heldout_fraction=0.1, seed=0)
    # Independent of the input order: a document's side depends on its text and the seed only.
    assert (train, heldout) == split_documents(list(reversed(docs)), 0.1, seed=0)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(docs)
    assert len(heldout) == round(0.1 * len(docs))
    assert split_documents(docs, 0.1, seed=1)[1] != heldout
    assert split_documents(docs, 0.0)[1] == []
    with pytest.raises(ValueError):
        split_documents(docs, 1.0)


def test_split_keeps_duplicates_on_one_side():
    docs = [f"document {i}" for i in range(20)] * 2
    train, heldout = split_documents(docs, heldout_fraction=0.5, seed=3)
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == 40


def test_to_hf_dataset():
    ds = to_hf_dataset(["first text", "second text"])
    assert ds.column_names == ["text"]
    assert ds.num_rows == 2
    assert ds[1]["text"] == "second text"
