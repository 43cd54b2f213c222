"""Offline real text: sources, held-out split, pre-tokenised rows for SAELens (corpus/)."""

import os

# Before anything imports huggingface_hub / datasets, which read these once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import re
import warnings

import pytest
import torch
from helpers import tiny_lm, tiny_tokenizer

from softsae_lens.data import corpus
from softsae_lens.data.corpus import (
    FORTUNES_DIR,
    Corpus,
    load_corpus,
    pretokenized_warnings_ignored,
    python_doc_documents,
    split_documents,
    stdlib_doc_documents,
    stdlib_source_documents,
    stream_tokens_needed,
    to_hf_dataset,
    tokenize_corpus,
)
from softsae_lens.data.corpus.stdlib import render_stdlib_docs

# --- sources ------------------------------------------------------------------------------


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


def test_default_corpus_uses_what_is_installed_and_always_python_text(full_corpus):
    sources = full_corpus.name.split("+")
    assert {"pydoc", "stdlib-doc", "stdlib-src"} <= set(sources)
    assert set(full_corpus.origins) == set(sources)
    assert len(full_corpus.origins) == len(full_corpus.documents)
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


def test_corpus_origins_must_match_documents():
    with pytest.raises(ValueError, match="origins has 1 entries but there are 2 documents"):
        Corpus(name="x", documents=["a", "b"], origins=["x"])


def test_stdlib_sources_leave_out_tests_codecs_and_machine_files(tmp_path):
    files = {
        "abc.py": "kept 1",
        "pkg/__init__.py": "kept 2",
        "pkg/mod.py": "kept 3",
        "pkg/test_mod.py": "a test",
        "pkg/tests/helper.py": "a test helper",
        "idlelib/idle_test/x.py": "a test",
        "test/support.py": "the regression suite",
        "encodings/cp1252.py": "a codec table",
        "pydoc_data/topics.py": "the topic dump",
        "site-packages/pip.py": "an installed package",
        "config-3.11-x86_64-linux-gnu/python-config.py": "build settings",
        "_sysconfigdata__linux.py": "build settings",
        "notes.txt": "not python",
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert stdlib_source_documents(tmp_path) == ["kept 1", "kept 2", "kept 3"]
    assert stdlib_source_documents(tmp_path / "missing") == []


def test_stdlib_sources_of_this_interpreter():
    docs = stdlib_source_documents()
    assert len(docs) > 400
    assert sum(map(len, docs)) > 5_000_000
    assert any('"""Module doctest' in doc or "doctest" in doc[:200] for doc in docs)


def test_pydoc_pages_are_whole_and_machine_independent():
    import sys

    pages, failures = render_stdlib_docs(["json", "cgi", "platform"], progress=False)
    assert failures == {}
    assert pages["json"].startswith("Python Library Documentation: package json")
    for name, page in pages.items():
        assert not re.search(r"^(FILE|DATA)$", page, re.MULTILINE), name
        assert " at 0x" not in page, name
        assert sys.executable not in page and os.path.expanduser("~") not in page, name
    # cgi shows os.environ as a default argument: the worker's environment is a fixed one.
    assert "PYTHONHASHSEED" in pages["cgi"] and "/nonexistent" in pages["cgi"]
    assert render_stdlib_docs(["json", "cgi", "platform"], progress=False)[0] == pages


def test_pydoc_rendering_survives_modules_that_hang_crash_or_print(tmp_path):
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(600)\n")
    (tmp_path / "crashes.py").write_text("import os\nos._exit(3)\n")
    (tmp_path / "loud.py").write_text(
        '"""A module that talks."""\nprint("hello " * 1000)\nimport sys\nsys.stderr.write("x")\n'
    )
    (tmp_path / "raises.py").write_text("raise RuntimeError('nope')\n")
    pages, failures = render_stdlib_docs(
        ["json", "hangs", "crashes", "loud", "raises", "textwrap"],
        timeout=5,
        progress=False,
        search_path=[tmp_path],
    )
    assert sorted(pages) == ["json", "loud", "textwrap"]
    assert "A module that talks." in pages["loud"]
    assert failures["hangs"] == "timed out after 5 s"
    assert failures["crashes"] == "worker exited with code 3"
    assert failures["raises"].startswith("RuntimeError: nope")
    with pytest.raises(ValueError, match="timeout must be positive"):
        render_stdlib_docs(["json"], timeout=0)


@pytest.mark.slow
def test_stdlib_docs_render_once_then_come_from_the_cache(tmp_path):
    docs = stdlib_doc_documents(cache_root=tmp_path, progress=False)
    assert len(docs) > 150 and sum(map(len, docs)) > 2_000_000
    (cache_file,) = (tmp_path / "corpus").glob("stdlib-doc-*.json")
    cached = json.loads(cache_file.read_text())
    assert len(cached["pages"]) == len(docs)
    cached["pages"]["json"] = "EDITED"
    cache_file.write_text(json.dumps(cached))
    assert "EDITED" in stdlib_doc_documents(cache_root=tmp_path, progress=False)


# --- pre-tokenised rows -------------------------------------------------------------------

CTX = 32


@pytest.fixture(scope="module")
def small_corpus():
    c = load_corpus(("pydoc",))
    docs = c.documents[:40]
    # A second "source" so per-source counts are exercised.
    extra = ["def f(x):\n    return x + 1\n" * 20, "class A:\n    pass\n" * 30]
    return Corpus(
        name="pydoc+code",
        documents=docs + extra,
        origins=["pydoc"] * len(docs) + ["code"] * len(extra),
    )


def test_rows_are_what_sae_lens_would_build_on_the_fly(small_corpus):
    from sae_lens.training.activations_store import ActivationsStore

    model = tiny_lm()
    tc = tokenize_corpus(small_corpus, model.tokenizer, CTX, use_cache=False, progress=False)
    train_docs, heldout_docs = split_documents(small_corpus.documents, 0.1, 0)
    assert tc.heldout_documents == heldout_docs

    def store(dataset):
        return ActivationsStore(
            model=model,
            dataset=dataset,
            streaming=False,
            hook_name="blocks.0.hook_resid_post",
            hook_head_index=None,
            context_size=CTX,
            d_in=32,
            n_batches_in_buffer=2,
            total_training_tokens=CTX,
            store_batch_size_prompts=4,
            train_batch_size_tokens=CTX,
            prepend_bos=True,
            normalize_activations="none",
            device=torch.device("cpu"),
            dtype="float32",
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on_the_fly = store(to_hf_dataset(train_docs)).get_batch_tokens(tc.train.num_rows)
    assert any("not tokenized" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pretokenized_warnings_ignored():
            rows = store(tc.train).get_batch_tokens(tc.train.num_rows)
    assert [str(w.message) for w in caught] == []
    # The same rows, in a shuffled order (no stretch of the stream is one document).
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, on_the_fly.tolist()))
    assert not torch.equal(rows, on_the_fly)


def test_rows_are_shuffled_deterministically_and_spread_a_long_document():
    tokenizer = tiny_tokenizer()
    long_doc = " ".join(f"word{i}" for i in range(3000))
    shorts = [f"short document number {i} " * 5 for i in range(60)]
    docs = Corpus("mixed", [long_doc, *shorts])
    first = tokenize_corpus(docs, tokenizer, CTX, use_cache=False, progress=False)
    again = tokenize_corpus(docs, tokenizer, CTX, use_cache=False, progress=False)
    assert first.train["tokens"] == again.train["tokens"]
    assert first.heldout["tokens"] == again.heldout["tokens"]
    rows = first.train["tokens"]
    word = set(tokenizer("word", add_special_tokens=False)["input_ids"])
    of_long = [i for i, row in enumerate(rows) if sum(t in word for t in row) > CTX // 4]
    assert len(of_long) >= 10, "the long document should fill many rows"
    # Packed in order they would be rows 0..n-1 in a run; shuffled they spread over the split.
    assert of_long != list(range(of_long[0], of_long[0] + len(of_long)))
    assert of_long[-1] - of_long[0] > len(rows) // 2


def test_rows_counts_and_split(small_corpus):
    tokenizer = tiny_tokenizer()
    tc = tokenize_corpus(small_corpus, tokenizer, CTX, use_cache=False, progress=False)
    bos = tokenizer.bos_token_id
    train = torch.tensor(tc.train["tokens"])
    assert train.shape == (tc.train.num_rows, CTX) and (train[:, 0] == bos).all()
    assert tc.train_tokens == train.numel()
    assert tc.special_tokens == int((train == bos).sum())
    assert tc.train_content_tokens == train.numel() - tc.special_tokens
    heldout = torch.tensor(tc.heldout["tokens"])
    assert heldout.shape[1] == CTX and (heldout[:, 0] == bos).all()

    own = {
        origin: sum(
            len(tokenizer(d, add_special_tokens=False)["input_ids"])
            for d, o in zip(small_corpus.documents, small_corpus.origins, strict=True)
            if o == origin
        )
        for origin in ("pydoc", "code")
    }
    assert {name: s["tokens"] for name, s in tc.sources.items()} == own
    for s in tc.sources.values():
        assert s["tokens"] == s["train_tokens"] + s["heldout_tokens"]
    assert tc.sources["code"]["documents"] == 2
    # Content tokens survive packing except the tail that does not fill a last row.
    train_docs_tokens = sum(s["train_tokens"] for s in tc.sources.values())
    assert 0 <= train_docs_tokens - tc.train_content_tokens < CTX
    text = tc.describe()
    assert "pydoc: 40 documents" in text and "code: 2 documents" in text

    with pytest.raises(ValueError, match="context_size must be >= 2"):
        tokenize_corpus(small_corpus, tokenizer, 1, use_cache=False)
    with pytest.raises(ValueError, match="holds out no document"):
        tokenize_corpus(small_corpus, tokenizer, CTX, heldout_fraction=0.0, use_cache=False)


def test_rows_are_cached_by_tokenizer_documents_and_context(small_corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    first = tokenize_corpus(small_corpus, tokenizer, CTX, cache_root=tmp_path, progress=False)
    assert (first.cache_dir / "meta.json").is_file()
    again = tokenize_corpus(small_corpus, tokenizer, CTX, cache_root=tmp_path, progress=False)
    assert again.cache_dir == first.cache_dir
    assert again.train["tokens"] == first.train["tokens"]
    assert again.sources == first.sources and again.special_tokens == first.special_tokens

    edited = Corpus(
        name=small_corpus.name,
        documents=[*small_corpus.documents[:-1], small_corpus.documents[-1] + " edited"],
        origins=small_corpus.origins,
    )
    other_docs = tokenize_corpus(edited, tokenizer, CTX, cache_root=tmp_path, progress=False)
    other_ctx = tokenize_corpus(small_corpus, tokenizer, 16, cache_root=tmp_path, progress=False)
    dirs = {first.cache_dir, other_docs.cache_dir, other_ctx.cache_dir}
    assert len(dirs) == 3

    # An interrupted build (no meta.json) is rebuilt, not trusted.
    (first.cache_dir / "meta.json").unlink()
    rebuilt = tokenize_corpus(small_corpus, tokenizer, CTX, cache_root=tmp_path, progress=False)
    assert rebuilt.train["tokens"] == first.train["tokens"]


def test_budget_check_counts_tokens_not_rows(small_corpus):
    tc = tokenize_corpus(small_corpus, tiny_tokenizer(), CTX, use_cache=False, progress=False)
    needed = stream_tokens_needed(
        training_tokens=1000,
        train_batch_size_tokens=100,
        context_size=CTX,
        n_batches_in_buffer=4,
        store_batch_size_prompts=2,
        n_batches_for_norm_estimate=3,
    )
    assert needed == 1000 + 300 + 6 * CTX
    tc.check_budget(tc.train_content_tokens, "all of it")
    with pytest.raises(
        ValueError, match="needs .* tokens but the training split of 'pydoc\\+code'"
    ):
        tc.check_budget(tc.train_content_tokens + 1, "one token more")


@pytest.mark.slow
@pytest.mark.smollm2
def test_default_corpus_gives_millions_of_smollm2_tokens():
    from transformers import AutoTokenizer

    from softsae_lens.models.smollm2 import dequantized_folder

    tokenizer = AutoTokenizer.from_pretrained(str(dequantized_folder()))
    tc = tokenize_corpus(load_corpus(), tokenizer, 128, progress=False)
    assert tc.train_content_tokens > 2_000_000
    assert {"pydoc", "stdlib-doc", "stdlib-src"} <= set(tc.sources)
    for s in tc.sources.values():
        assert s["tokens"] > 50_000
    assert tc.heldout_tokens > 100_000
    # The demo's default run (300k tokens plus its norm estimate and buffer) fits with room.
    tc.check_budget(stream_tokens_needed(300_000, 1024, 128, 16, 8, 20), "the default demo")
