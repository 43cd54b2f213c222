"""Paper checkpoints (dictionary_learning fork) -> SAELens SoftSAE: ``softsae_lens.convert``.

The checkpoints are built here with the paper's key names and shapes and random weights; the
reference below re-implements the paper's encode/decode in plain torch from its description,
independently of the converter.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE
from torch import nn

import softsae_lens  # noqa: F401  (registers "soft")
from softsae_lens import SoftSAE
from softsae_lens.convert import (
    PAPER_CLIP,
    PAPER_LLM,
    HookNameError,
    PaperCheckpointError,
    convert_paper_checkpoint,
    convert_paper_state_dict,
    find_paper_config,
    load_paper_checkpoint,
    paper_hook_name,
    read_paper_state_dict,
)
from softsae_lens.convert.cli import main

D_IN, D_SAE, K = 24, 64, 6
NORM_FACTOR = 7.25
HOOK = "blocks.3.hook_resid_post"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Paper-format checkpoints and the reference implementation


def paper_state_dict(variant="llm", seed=0, k=K, k_max=None, norm_factor=NORM_FACTOR):
    """Random weights under the paper's key names and shapes (``nn.Linear`` layout)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    decoder = randn(D_IN, D_SAE)
    sd = {
        "encoder.weight": randn(D_SAE, D_IN, scale=D_IN**-0.5),
        "encoder.bias": randn(D_SAE, scale=0.1),
        "decoder.weight": decoder / decoder.norm(dim=0, keepdim=True),
        "b_dec": randn(D_IN, scale=0.2),
        "k_estimator.0.weight": randn(D_SAE, D_IN, scale=D_IN**-0.5),
        "k_estimator.0.bias": randn(D_SAE, scale=0.1),
        # Spread the logits so k_hat covers most of [0, k_max] (and some rows clamp at 1).
        "k_estimator.2.weight": randn(1, D_SAE, scale=0.4),
        "k_estimator.2.bias": randn(1, scale=0.1),
        "k": torch.tensor(k, dtype=torch.int),
        "alpha": torch.tensor(1e-4),
        "k_max": torch.tensor(2 * k if k_max is None else k_max, dtype=torch.int),
        "norm_factor": torch.tensor(norm_factor),
    }
    if variant == "clip":
        sd["shift_factor"] = randn(D_IN, scale=3.0)
    return sd


def paper_config(variant="llm", submodule_name="resid_post_layer_3", layer=3, **trainer):
    dict_class, trainer_class = (
        ("SoftSAE", "SoftSAETrainer") if variant == "llm" else ("SoftTopKSAE", "SoftTopKTrainer")
    )
    entry = {
        "trainer_class": trainer_class,
        "dict_class": dict_class,
        "lr": 3e-4,
        "steps": 1000,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "k": K,
        "lm_name": "google/gemma-2-2b" if variant == "llm" else "ViT-B/16",
        "layer": layer,
        "submodule_name": submodule_name,
        "soft_topk_alpha": 1e-4,
        "hard_topk_steps": 100,
        "seed": 0,
        "device": "cuda",
    }
    entry.update(trainer)
    return {"trainer": entry, "buffer": {"d_submodule": D_IN, "io": "out", "ctx_len": 128}}


def write_run(folder: Path, sd, config=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "ae.pt")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=4))
    return folder / "ae.pt"


def paper_reference(sd, x):
    """The paper's inference from its description: normalise, encode, per-row hard
    top-floor(k_hat), decode. Returns features, k_hat (clamped as the paper does), the integer
    k per row, and the paper's output (normalised units for the LLM variant, raw for CLIP)."""
    sd = {name: t.to(x.dtype) for name, t in sd.items()}
    norm_factor = sd["norm_factor"]
    shift = sd.get("shift_factor", torch.zeros((), dtype=x.dtype))
    x_n = (x - shift) / norm_factor
    centred = x_n - sd["b_dec"]
    post_relu = F.relu(F.linear(centred, sd["encoder.weight"], sd["encoder.bias"]))
    hidden = F.relu(F.linear(centred, sd["k_estimator.0.weight"], sd["k_estimator.0.bias"]))
    logit = F.linear(hidden, sd["k_estimator.2.weight"], sd["k_estimator.2.bias"])
    k_hat = torch.clamp(torch.sigmoid(logit)[:, 0] * sd["k_max"], min=1, max=D_SAE)
    k_int = k_hat.long()
    values, indices = torch.sort(post_relu, dim=1, descending=True)
    keep = torch.arange(D_SAE).unsqueeze(0) < k_int.unsqueeze(1)
    features = torch.zeros_like(post_relu).scatter(1, indices, values * keep)
    x_hat_n = F.linear(features, sd["decoder.weight"]) + sd["b_dec"]
    output = x_hat_n if "shift_factor" not in sd else x_hat_n * norm_factor + shift
    return features, k_hat, k_int, output


def raw_inputs(sd, n=512, seed=1, dtype=torch.float32):
    """Raw activations whose normalised version is of order 1 around b_dec."""
    g = torch.Generator().manual_seed(seed)
    x_n = torch.randn(n, D_IN, generator=g) + sd["b_dec"]
    x = x_n * sd["norm_factor"] + sd.get("shift_factor", 0.0)
    return x.to(dtype)


def compare(sae: SoftSAE, sd, x) -> dict[str, float]:
    """Check the converted SAE against the reference; return the max abs differences."""
    ref_f, ref_k_hat, ref_k_int, ref_out = paper_reference(sd, x)
    ref_raw = ref_out * sd["norm_factor"].to(x.dtype) if "shift_factor" not in sd else ref_out
    with torch.no_grad():
        f = sae.encode(x)
        k_hat = sae.predict_k(x).clamp(1, D_SAE)
        recon = sae.decode(f)
        forward = sae(x)
    assert torch.equal(f != 0, ref_f != 0), "different latents selected"
    assert torch.equal(sae.round_k(sae.predict_k(x)), ref_k_int)
    diffs = {
        "features": (f - ref_f).abs().max().item(),
        "k_hat": (k_hat - ref_k_hat).abs().max().item(),
        "reconstruction": (recon - ref_raw).abs().max().item(),
        "forward": (forward - ref_raw).abs().max().item(),
    }
    # SoftSAE computes k_hat in float32 whatever its dtype (see soft_sae.py); the rest follows
    # the SAE's dtype.
    tol = 1e-4 if x.dtype == torch.float32 else 1e-10
    scale = {"features": 1.0, "reconstruction": NORM_FACTOR, "forward": NORM_FACTOR}
    for name, diff in diffs.items():
        limit = 1e-5 * float(sd["k_max"]) if name == "k_hat" else tol * scale[name]
        assert diff <= limit, f"{name}: max abs diff {diff:.3g}"
    return diffs


# ---------------------------------------------------------------------------------------------
# Equivalence with the paper


@pytest.mark.parametrize("variant", ["llm", "clip"])
def test_converted_sae_matches_paper_inference(tmp_path, variant):
    sd = paper_state_dict(variant)
    ckpt = write_run(tmp_path / "run", sd, paper_config(variant))
    sae = load_paper_checkpoint(ckpt)
    assert isinstance(sae, SoftSAE)
    assert sae.cfg.k_rounding == "floor" and not sae.cfg.rescale_acts_by_decoder_norm
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k, sae.cfg.k_max) == (D_IN, D_SAE, K, 2.0 * K)

    x = raw_inputs(sd)
    diffs = compare(sae, sd, x)
    print(variant, {name: f"{d:.2e}" for name, d in diffs.items()})

    # The data exercise many different k per row and the paper's clamp of k_hat at 1, and
    # every row has enough positive pre-activations that exactly k_int latents fire.
    _, _, ref_k_int, _ = paper_reference(sd, x)
    assert len(set(ref_k_int.tolist())) >= 8
    with torch.no_grad():
        assert (sae.predict_k(x) < 1).any()
        assert torch.equal((sae.encode(x) != 0).sum(-1), ref_k_int)


def test_llm_reconstruction_is_paper_output_in_raw_units(tmp_path):
    """The LLM variant returns x_hat in normalised units; the converted SAE in raw units."""
    sd = paper_state_dict("llm")
    sae = load_paper_checkpoint(write_run(tmp_path, sd, paper_config()))
    x = raw_inputs(sd)
    _, _, _, paper_out = paper_reference(sd, x)
    with torch.no_grad():
        ours = sae(x)
    torch.testing.assert_close(ours / NORM_FACTOR, paper_out, rtol=1e-5, atol=1e-5)


def test_floor_rounding_matches_paper_where_round_differs(tmp_path):
    sd = paper_state_dict("llm", seed=3)
    sae = load_paper_checkpoint(write_run(tmp_path, sd, paper_config()))
    x = raw_inputs(sd, n=1024, seed=4)
    ref_f, ref_k_hat, ref_k_int, _ = paper_reference(sd, x)
    differ = (torch.round(ref_k_hat) != torch.floor(ref_k_hat)) & (ref_k_hat >= 1)
    assert differ.sum() >= 100, "test data should have many rows with fractional part >= 0.5"

    with torch.no_grad():
        f = sae.encode(x)
    assert torch.equal((f != 0)[differ], (ref_f != 0)[differ])
    torch.testing.assert_close(f[differ], ref_f[differ], rtol=1e-5, atol=1e-5)
    assert torch.equal((f != 0).sum(-1)[differ], ref_k_int[differ])

    # The same weights with round-half-up rounding keep one more latent on exactly those rows,
    # so this comparison does tell floor from round.
    sae.cfg.k_rounding = "round"
    with torch.no_grad():
        l0_round = (sae.encode(x) != 0).sum(-1)
    assert torch.equal(l0_round[differ], ref_k_int[differ] + 1)
    assert torch.equal(l0_round[~differ], ref_k_int[~differ])


def test_float64_conversion_is_exact_to_rounding(tmp_path):
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in paper_state_dict().items()}
    sae = convert_paper_state_dict(sd, paper_config(), dtype="float64")
    assert sae.W_enc.dtype == torch.float64 and sae.cfg.dtype == "float64"
    diffs = compare(sae, sd, raw_inputs(sd, dtype=torch.float64))
    assert max(d for name, d in diffs.items() if name != "k_hat") < 1e-12


def test_missing_k_max_buffer_defaults_to_twice_k():
    """The CLIP code of some versions has no k_max buffer and uses 2 * k."""
    sd = paper_state_dict("clip", k_max=None)
    del sd["k_max"]
    sae = convert_paper_state_dict(sd, paper_config("clip"))
    assert sae.cfg.k_max == 2.0 * K
    assert "2 * k" in sae.cfg.metadata.source["k_max_from"]
    sd_ref = dict(sd, k_max=torch.tensor(2 * K))
    compare(sae, sd_ref, raw_inputs(sd))


def test_non_default_k_max_and_k_from_buffer():
    # config.json is written before training: its k can be the pre-anneal value.
    sd = paper_state_dict("llm", k=5, k_max=17)
    sae = convert_paper_state_dict(sd, paper_config(k=D_IN))
    assert (sae.cfg.k, sae.cfg.k_max) == (5, 17.0)
    assert sae.cfg.metadata.source["k_from"] == "checkpoint buffer k"
    compare(sae, sd, raw_inputs(sd))


# ---------------------------------------------------------------------------------------------
# Saving and loading


@pytest.mark.parametrize("variant", ["llm", "clip"])
def test_round_trip_through_sae_lens(tmp_path, variant):
    sd = paper_state_dict(variant)
    ckpt = write_run(tmp_path / "run", sd, paper_config(variant))
    out = tmp_path / "converted"
    sae = convert_paper_checkpoint(ckpt, out)
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()

    loaded = SAE.load_from_disk(out)
    assert isinstance(loaded, SoftSAE)
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "soft"
    x = raw_inputs(sd)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
        assert torch.equal(loaded.predict_k(x), sae.predict_k(x))
    compare(loaded, sd, x)

    # A second save of the loaded SAE (save_model is SAELens's inference save) is identical.
    loaded.save_model(tmp_path / "again")
    again = SAE.load_from_disk(tmp_path / "again")
    for name, tensor in sae.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_refuses_to_overwrite_unless_asked(tmp_path):
    ckpt = write_run(tmp_path / "run", paper_state_dict(), paper_config())
    convert_paper_checkpoint(ckpt, tmp_path / "out")
    with pytest.raises(PaperCheckpointError, match="already holds cfg.json"):
        convert_paper_checkpoint(ckpt, tmp_path / "out")
    convert_paper_checkpoint(ckpt, tmp_path / "out", overwrite=True)


@pytest.mark.parametrize("target", ["a_file", "a_file/below"])
def test_out_dir_that_is_or_lies_under_a_file_gets_a_clear_error(tmp_path, capsys, target):
    ckpt = write_run(tmp_path / "run", paper_state_dict(), paper_config())
    (tmp_path / "a_file").write_text("not a folder")
    assert main([str(ckpt), str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert "error: out_dir" in err and "is an existing file" in err and "Traceback" not in err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_folder_and_intermediate_checkpoint_paths(tmp_path):
    sd = paper_state_dict()
    write_run(tmp_path / "run", sd, paper_config())
    assert load_paper_checkpoint(tmp_path / "run").cfg.metadata.hook_name == HOOK

    # dictionary_learning's intermediate checkpoints: <run>/checkpoints/ae_<step>.pt
    (tmp_path / "run" / "checkpoints").mkdir()
    torch.save(sd, tmp_path / "run" / "checkpoints" / "ae_500.pt")
    ckpt = tmp_path / "run" / "checkpoints" / "ae_500.pt"
    assert find_paper_config(ckpt) == tmp_path / "run" / "config.json"
    assert load_paper_checkpoint(ckpt).cfg.metadata.hook_name == HOOK


# ---------------------------------------------------------------------------------------------
# Metadata and hook names


def test_metadata_from_config(tmp_path):
    sd = paper_state_dict("clip")
    config = paper_config("clip", submodule_name="image_embeddings", layer=-1)
    ckpt = write_run(tmp_path / "run", sd, config)
    sae = load_paper_checkpoint(ckpt)
    meta = sae.cfg.metadata
    assert meta.model_name == "ViT-B/16"
    assert meta.hook_name == "image_embeddings"  # CLIP: no TransformerLens model, used as is
    assert meta.context_size == 128
    source = meta.source
    assert source["format"] == PAPER_CLIP
    assert source["path"] == str(ckpt.resolve()) and Path(source["path"]).is_absolute()
    assert source["config_path"] == str((tmp_path / "run" / "config.json").resolve())
    assert source["dict_class"] == "SoftTopKSAE"
    assert source["norm_factor"] == NORM_FACTOR
    shift = torch.tensor(source["shift_factor"], dtype=torch.float64)
    torch.testing.assert_close(shift, sd["shift_factor"].double())
    assert source["alpha"] == pytest.approx(1e-4)
    assert source["trainer_config"]["submodule_name"] == "image_embeddings"
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (D_IN, D_SAE, K)

    llm = load_paper_checkpoint(write_run(tmp_path / "llm", paper_state_dict(), paper_config()))
    assert llm.cfg.metadata.model_name == "google/gemma-2-2b"
    assert llm.cfg.metadata.hook_name == HOOK
    assert llm.cfg.metadata.source["format"] == PAPER_LLM
    assert llm.cfg.metadata.source["shift_factor"] is None

    overridden = load_paper_checkpoint(
        tmp_path / "llm", hook_name="blocks.3.hook_resid_pre", model_name="gemma-2-2b"
    )
    assert overridden.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    assert overridden.cfg.metadata.model_name == "gemma-2-2b"
    assert overridden.cfg.metadata.source["hook_name_from"] == "given explicitly"


@pytest.mark.parametrize(
    ("submodule_name", "layer", "io", "expected"),
    [
        ("resid_post_layer_12", 12, "out", "blocks.12.hook_resid_post"),
        ("resid_pre_layer_0", 0, "out", "blocks.0.hook_resid_pre"),
        ("mlp_out_layer_3", 3, "out", "blocks.3.hook_mlp_out"),
        ("attn_out_layer_3", None, None, "blocks.3.hook_attn_out"),
        ("model.layers.12", 12, "out", "blocks.12.hook_resid_post"),
        ("layers.12", 12, None, "blocks.12.hook_resid_post"),
        ("gpt_neox.layers.3", 3, "out", "blocks.3.hook_resid_post"),
        ("transformer.h.5", 5, "out", "blocks.5.hook_resid_post"),
        ("model.layers.12", 12, "in", "blocks.12.hook_resid_pre"),
    ],
)
def test_hook_name_mapping(submodule_name, layer, io, expected):
    config = paper_config(submodule_name=submodule_name, layer=layer)
    config["buffer"]["io"] = io
    assert paper_hook_name(config) == expected


@pytest.mark.parametrize(
    ("submodule_name", "layer", "io", "why"),
    [
        ("model.layers.12.mlp", 12, "out", "known forms are"),
        ("model.layers.12.self_attn", 12, "out", "known forms are"),
        (None, 12, "out", "names no submodule"),
        ("resid_post_layer_12", 11, "out", "says layer 12 but layer is 11"),
        ("model.layers.12", 12, "in_and_out", "is not one hook"),
    ],
)
def test_ambiguous_hook_name_requires_explicit_one(tmp_path, submodule_name, layer, io, why):
    config = paper_config(submodule_name=submodule_name, layer=layer)
    config["buffer"]["io"] = io
    with pytest.raises(HookNameError, match=re.escape(why)) as info:
        paper_hook_name(config)
    message = str(info.value)
    assert "--hook-name" in message and f"submodule_name={submodule_name!r}" in message

    ckpt = write_run(tmp_path, paper_state_dict(), config)
    with pytest.raises(HookNameError):
        load_paper_checkpoint(ckpt)
    sae = load_paper_checkpoint(ckpt, hook_name="blocks.12.hook_mlp_out")
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_mlp_out"


def test_no_config_requires_hook_name(tmp_path):
    ckpt = write_run(tmp_path, paper_state_dict())
    with pytest.raises(HookNameError, match="no config.json"):
        load_paper_checkpoint(ckpt)
    sae = load_paper_checkpoint(ckpt, hook_name=HOOK)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.model_name is None
    assert sae.cfg.metadata.source["config_path"] is None

    clip = write_run(tmp_path / "clip", paper_state_dict("clip"), paper_config("clip", None))
    with pytest.raises(HookNameError, match="names no submodule"):
        load_paper_checkpoint(clip)


# ---------------------------------------------------------------------------------------------
# Errors for checkpoints that are not paper SoftSAEs


def _drop(*names):
    return lambda sd: {k: v for k, v in sd.items() if k not in names}


def _set(name, value):
    return lambda sd: {**sd, name: value}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _drop(*(k for k in paper_state_dict() if k.startswith("k_estimator."))),
            "not a SoftSAE checkpoint: missing the k-estimator (k_estimator.0.weight, "
            "k_estimator.0.bias, k_estimator.2.weight, k_estimator.2.bias)",
        ),
        (_drop("k_estimator.2.bias"), "missing the k-estimator (k_estimator.2.bias)"),
        (_drop("encoder.weight"), "not a paper SoftSAE checkpoint: missing encoder.weight"),
        (
            _set("decoder.weight", torch.zeros(D_SAE, D_IN)),
            f"decoder.weight has shape [{D_SAE}, {D_IN}], expected [{D_IN}, {D_SAE}]",
        ),
        (
            _set("k_estimator.2.weight", torch.zeros(D_SAE)),
            f"k_estimator.2.weight has shape [{D_SAE}], expected [1, {D_SAE}]",
        ),
        (
            _set("k_estimator.0.weight", torch.zeros(D_SAE, D_IN + 1)),
            f"k_estimator.0.weight has shape [{D_SAE}, {D_IN + 1}], expected [{D_SAE}, {D_IN}]",
        ),
        (_set("b_dec", torch.zeros(D_IN + 2)), f"b_dec has shape [{D_IN + 2}], expected [{D_IN}]"),
        (
            _set("shift_factor", torch.zeros(3)),
            f"shift_factor has shape [3], expected [{D_IN}] or a scalar",
        ),
        (_set("encoder.weight", torch.zeros(D_SAE)), "encoder.weight has shape [64]"),
        (_set("k_estimator.4.weight", torch.zeros(1)), "unexpected k-estimator parameters"),
        (_set("k_max", torch.tensor(D_SAE + 1)), f"k_max={D_SAE + 1}"),
        (_set("k_max", torch.tensor(K - 1)), "1 <= k <= k_max <= d_sae"),
        (_set("k", torch.tensor(2.5)), "k must be a positive integer"),
        (_set("k", torch.zeros(2)), "k has shape [2], expected a scalar buffer"),
        (_set("norm_factor", torch.tensor(0.0)), "norm_factor must be positive"),
        (_set("encoder.bias", torch.full((D_SAE,), float("nan"))), "encoder.bias holds NaN"),
        (_set("b_dec", "zeros"), "'b_dec' is a str, expected a tensor"),
    ],
)
def test_not_a_softsae_errors(mutate, message):
    sd = mutate(paper_state_dict())
    with pytest.raises(PaperCheckpointError, match=re.escape(message)):
        convert_paper_state_dict(sd, hook_name=HOOK)


def test_not_a_state_dict_and_config_mismatch(tmp_path):
    with pytest.raises(PaperCheckpointError, match="expected a state dict"):
        convert_paper_state_dict([1, 2, 3], hook_name=HOOK)
    torch.save([torch.zeros(2)], tmp_path / "ae.pt")
    with pytest.raises(PaperCheckpointError, match="holds a list, not a state dict"):
        read_paper_state_dict(tmp_path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(PaperCheckpointError, match="could not read"):
        read_paper_state_dict(tmp_path / "junk.pt")
    with pytest.raises(PaperCheckpointError, match="no checkpoint at"):
        read_paper_state_dict(tmp_path / "missing")
    with pytest.raises(PaperCheckpointError, match="config.json says dict_size=128"):
        convert_paper_state_dict(paper_state_dict(), paper_config(dict_size=128))


def test_unknown_entries_and_dict_class_warn():
    sd = {**paper_state_dict(), "threshold": torch.tensor(0.5)}
    with pytest.warns(UserWarning, match="ignoring state dict entries .*threshold"):
        sae = convert_paper_state_dict(sd, paper_config())
    assert sae.cfg.metadata.source["ignored_keys"] == ["threshold"]
    with pytest.warns(UserWarning, match="dict_class is 'SoftSAEPatched'"):
        convert_paper_state_dict(paper_state_dict(), paper_config(dict_class="SoftSAEPatched"))


class PickledPaperSAE(nn.Module):
    """A whole module saved with torch.save (not a plain state dict)."""

    def __init__(self, sd):
        super().__init__()
        for name, tensor in sd.items():
            self.register_buffer(name.replace(".", "_"), tensor)
        self.names = list(sd)

    def state_dict(self, *args, **kwargs):
        return {name: getattr(self, name.replace(".", "_")) for name in self.names}


def test_pickled_module_needs_unsafe_pickle(tmp_path):
    sd = paper_state_dict()
    torch.save(PickledPaperSAE(sd), tmp_path / "ae.pt")
    with pytest.raises(PaperCheckpointError, match="unsafe_pickle=True"):
        load_paper_checkpoint(tmp_path, hook_name=HOOK)
    sae = load_paper_checkpoint(tmp_path, hook_name=HOOK, unsafe_pickle=True)
    compare(sae, sd, raw_inputs(sd))


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.mark.slow  # a fresh interpreter importing sae_lens: most of this file's run time
def test_cli_subprocess_converts_and_loads(tmp_path):
    sd = paper_state_dict("llm")
    ckpt = write_run(tmp_path / "run", sd, paper_config())
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "softsae_lens.convert", str(ckpt), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"Wrote SAELens SoftSAE (architecture 'soft') to {out.resolve()}"
    assert f"{PAPER_LLM}: d_in={D_IN} d_sae={D_SAE} k={K} k_max={2 * K}" in lines[1]
    assert f"hook={HOOK}" in lines[1] and "k_rounding=floor" in lines[1]
    compare(SAE.load_from_disk(out), sd, raw_inputs(sd))


def test_cli_help_options_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--hook-name", "--model-name", "--config", "--dtype", "--unsafe-pickle"):
        assert option in help_text

    sd = paper_state_dict("clip")
    ckpt = write_run(tmp_path / "run", sd, paper_config("clip", submodule_name=None))
    assert main([str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: cannot tell the TransformerLens hook name" in err and "--hook-name" in err

    args = [str(ckpt), str(tmp_path / "out"), "--hook-name", "clip_embedding"]
    assert main([*args, "--model-name", "openai/clip-vit-base-patch16", "--dtype", "float64"]) == 0
    stdout = capsys.readouterr().out
    assert PAPER_CLIP in stdout and "shift_factor folded" in stdout
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.metadata.hook_name == "clip_embedding"
    assert loaded.cfg.metadata.model_name == "openai/clip-vit-base-patch16"
    assert loaded.W_enc.dtype == torch.float64

    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0

    bad = write_run(tmp_path / "bad", _drop("k_estimator.0.weight")(sd), paper_config("clip"))
    assert main([str(bad), str(tmp_path / "bad_out"), "--hook-name", HOOK]) == 2
    assert "k_estimator.0.weight" in capsys.readouterr().err

    config = tmp_path / "elsewhere.json"
    config.write_text(json.dumps(paper_config("clip", submodule_name="mlp_out_layer_3")))
    assert main([str(ckpt), str(tmp_path / "out2"), "--config", str(config)]) == 0
    assert SAE.load_from_disk(tmp_path / "out2").cfg.metadata.hook_name == "blocks.3.hook_mlp_out"
