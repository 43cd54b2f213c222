"""SoftSAE at inference: per-input k, hooks, folds, decoding; saving and loading."""

import copy

import pytest
import torch
from helpers import (
    D_MODEL,
    inference_copy,
    make_training_sae,
)
from sae_lens import (
    SAE,
    TrainingSAE,
)

from softsae_lens import (
    SoftSAE,
    SoftTrainingSAE,
)

# ---------------------------------------------------------------- inference behaviour


def test_predict_k_and_encode_select_round_k_hat_latents(tmp_path):
    sae = inference_copy(make_training_sae(), tmp_path)
    x = torch.randn(64, D_MODEL) * 3
    k_hat = sae.predict_k(x)
    assert k_hat.shape == (64,) and k_hat.dtype == torch.float32
    assert k_hat.std() > 0  # the estimator is input dependent
    acts = sae.encode(x)
    pre = (sae.process_sae_in(x) @ sae.W_enc + sae.b_enc).relu()
    expected_k = k_hat.round().clamp(1, sae.cfg.k_max).long()
    for row in range(64):
        top = pre[row].topk(int(expected_k[row])).indices
        assert set(acts[row].nonzero().squeeze(-1).tolist()) <= set(top.tolist())
        torch.testing.assert_close(acts[row, top], pre[row, top])
    assert ((acts != 0).sum(-1) <= expected_k).all()


def test_encode_on_batch_ctx_d_matches_flat(tmp_path):
    sae = inference_copy(make_training_sae(), tmp_path)
    x = torch.randn(3, 5, D_MODEL)
    torch.testing.assert_close(sae.encode(x).reshape(15, -1), sae.encode(x.reshape(15, -1)))
    assert sae.predict_k(x).shape == (3, 5)
    assert sae(x).shape == x.shape


def test_floor_rounding_reproduces_paper_inference(tmp_path):
    sae = inference_copy(make_training_sae(), tmp_path)
    x = torch.randn(32, D_MODEL)
    k_hat = sae.predict_k(x)
    sae.cfg.k_rounding = "floor"
    assert torch.equal(sae.round_k(k_hat), k_hat.floor().clamp(1, sae.cfg.k_max).long())
    sae.cfg.k_rounding = "round"
    assert torch.equal(sae.round_k(k_hat), k_hat.round().clamp(1, sae.cfg.k_max).long())


def test_hook_sae_k_can_be_read_and_replaced(tmp_path):
    sae = inference_copy(make_training_sae(), tmp_path)
    x = torch.randn(20, D_MODEL) * 3
    seen = {}
    sae.hook_sae_k.add_hook(lambda k, hook: seen.update(k=k.clone()))
    sae.encode(x)
    torch.testing.assert_close(seen["k"], sae.predict_k(x))
    sae.reset_hooks()
    sae.hook_sae_k.add_hook(lambda k, hook: torch.ones_like(k))
    assert ((sae.encode(x) != 0).sum(-1) == 1).all()
    sae.reset_hooks()


def test_fold_activation_norm_scaling_factor_preserves_outputs(tmp_path):
    sae = make_training_sae()
    x = torch.randn(40, D_MODEL) * 5
    s = 0.37
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(s)
    torch.testing.assert_close(folded.predict_k(x), sae.predict_k(x * s))
    # with rescale_acts_by_decoder_norm the decoder norms shrink by s, so every latent
    # shrinks by s (as in SAELens's TopK): same selection, same reconstruction
    torch.testing.assert_close(folded.encode(x), sae.encode(x * s) / s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded(x), sae(x * s) / s, atol=1e-5, rtol=1e-4)
    # the inference copy saved after folding agrees too
    loaded = inference_copy(folded, tmp_path)
    torch.testing.assert_close(loaded(x), sae(x * s) / s, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_fold_activation_whitening_preserves_outputs(apply_b_dec_to_input):
    sae = make_training_sae(
        apply_b_dec_to_input=apply_b_dec_to_input, rescale_acts_by_decoder_norm=False
    )
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(D_MODEL, generator=g)
    whitening = torch.randn(D_MODEL, D_MODEL, generator=g) / D_MODEL**0.5 + torch.eye(D_MODEL)
    unwhitening = torch.linalg.inv(whitening)
    x = torch.randn(30, D_MODEL, generator=g) * 2
    z = (x - mean) @ whitening
    folded = copy.deepcopy(sae)
    folded.fold_activation_whitening(mean, whitening, unwhitening)
    torch.testing.assert_close(folded.predict_k(x), sae.predict_k(z), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(folded.encode(x), sae.encode(z), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(folded(x), sae(z) @ unwhitening + mean, atol=1e-4, rtol=1e-4)


def test_fold_w_dec_norm_behaves_like_topk():
    sae = make_training_sae(rescale_acts_by_decoder_norm=False)
    with pytest.raises(NotImplementedError, match="rescale_acts_by_decoder_norm is False"):
        sae.fold_W_dec_norm()
    sae = make_training_sae(rescale_acts_by_decoder_norm=True)
    x = torch.randn(20, D_MODEL)
    before = sae(x)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae(x), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae))


# ---------------------------------------------------------------- save / load


def test_save_inference_then_load_from_disk_gives_identical_outputs(tmp_path):
    sae = make_training_sae()
    loaded = inference_copy(sae, tmp_path)
    assert type(loaded) is SoftSAE
    for x in (torch.randn(25, D_MODEL) * 3, torch.randn(2, 7, D_MODEL)):
        torch.testing.assert_close(loaded.predict_k(x), sae.predict_k(x))
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x), sae(x), atol=1e-5, rtol=1e-5)
    # every k-estimator tensor left the meta device
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_training_checkpoint_round_trip(tmp_path):
    sae = make_training_sae(alpha_end=3e-3, total_training_steps=1234)
    sae.save_model(tmp_path / "ckpt")
    loaded = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    assert type(loaded) is SoftTrainingSAE
    assert loaded.cfg.total_training_steps == 1234 and loaded.cfg.alpha_end == 3e-3
    for name, tensor in sae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert loaded.cfg.schedule(600) == sae.cfg.schedule(600)


def test_legacy_checkpoint_with_a_step_buffer_loads(tmp_path):
    """softsae_lens 0.1 checkpoints carry an int64 ``completed_training_steps``."""
    from safetensors.torch import load_file, save_file

    sae = make_training_sae()
    sae.save_model(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "sae_weights.safetensors"
    state = load_file(weights)
    state["completed_training_steps"] = torch.tensor(17, dtype=torch.long)
    save_file(state, weights)
    for loader in (SAE, TrainingSAE):
        loaded = loader.load_from_disk(tmp_path / "ckpt")
        assert "completed_training_steps" not in loaded.state_dict()
        torch.testing.assert_close(loaded.W_k_in, sae.W_k_in)
