"""SAELens conformance: the generic checks SAELens's own suite applies to its built-in
architectures, run on "soft" beside "topk" so every assertion is shown to hold for a built-in
too. Each is a way a user's ordinary SAELens tooling touches an SAE."""

import pytest
import torch
from helpers import D_MODEL, tiny_runner_cfg, token_dataset, train_step_input
from sae_lens import SAE, LanguageModelSAETrainingRunner, TrainingSAE
from sae_lens.registry import get_sae_training_class

import softsae_lens  # noqa: F401  (registers "soft")
from softsae_lens import SoftSAE, configure_runner

ARCHITECTURES = ["topk", "soft"]
D_SAE = 96


def build(architecture: str, seed: int = 0, **kwargs) -> TrainingSAE:
    torch.manual_seed(seed)
    sae_cls, cfg_cls = get_sae_training_class(architecture)
    if architecture == "soft":
        # schedules that still move at the steps used below
        kwargs = dict(
            total_training_steps=100, k_anneal_fraction=0.5, alpha_anneal_fraction=0.5, **kwargs
        )
    cfg = cfg_cls(d_in=D_MODEL, d_sae=D_SAE, k=6, **kwargs)
    sae = sae_cls(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
        if architecture == "soft":
            sae.W_k_out.normal_(0, 0.5)
    return sae


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(D_MODEL,), (5, D_MODEL), (2, 3, D_MODEL), (2, 2, 3, D_MODEL)])
def test_encode_decode_forward_accept_every_leading_shape(architecture, shape):
    sae = build(architecture).eval()
    x = torch.randn(shape)
    acts = sae.encode(x)
    assert acts.shape == (*shape[:-1], D_SAE)
    assert sae.decode(acts).shape == shape and sae(x).shape == shape
    flat = sae.encode(x.reshape(-1, D_MODEL))
    torch.testing.assert_close(acts.reshape(-1, D_SAE), flat)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_encode_of_an_empty_batch(architecture):
    sae = build(architecture).eval()
    assert sae.encode(torch.randn(0, D_MODEL)).shape == (0, D_SAE)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_state_dict_holds_only_float_tensors_that_tools_can_randomise(architecture):
    sae = build(architecture)
    state = sae.state_dict()
    assert all(t.is_floating_point() for t in state.values()), {
        k: t.dtype for k, t in state.items()
    }
    # SAELens's test helpers randomise every entry this way
    sae.load_state_dict({k: torch.rand_like(v) for k, v in state.items()})


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_forward_pass_is_repeatable_at_one_step(architecture):
    """Gradient accumulation or a second forward for logging must not move any schedule."""
    sae = build(architecture)
    x = torch.randn(16, D_MODEL)
    losses = [sae.training_forward_pass(train_step_input(x, step=3)).loss for _ in range(4)]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_use_error_term_returns_the_input(architecture):
    sae = build(architecture).eval()
    sae.use_error_term = True
    x = torch.randn(4, 3, D_MODEL)
    torch.testing.assert_close(sae(x), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_checkpoint_folder_loads_as_inference_sae(architecture, tmp_path):
    """SAELens loads a checkpoint folder (``save_model``) with ``SAE.load_from_disk``."""
    sae = build(architecture).eval()
    sae.save_model(tmp_path / "ckpt")
    loaded = SAE.load_from_disk(tmp_path / "ckpt")
    assert not isinstance(loaded, TrainingSAE)
    x = torch.randn(12, D_MODEL)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
    sae.save_inference_model(tmp_path / "final")
    final = SAE.load_from_disk(tmp_path / "final")
    torch.testing.assert_close(loaded.encode(x), final.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded(x), final(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("normalize", ["layer_norm", "constant_norm_rescale"])
def test_aux_loss_refuses_normalised_space_residuals(architecture, normalize):
    """TopK's aux loss would compare a normalised reconstruction with a raw residual."""
    sae = build(architecture, normalize_activations=normalize)
    with pytest.raises(ValueError, match="does not support activation normalization"):
        sae.training_forward_pass(
            train_step_input(torch.randn(8, D_MODEL), dead=torch.ones(D_SAE, dtype=torch.bool))
        )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bfloat16_copy_encodes(architecture):
    sae = build(architecture).eval().to(torch.bfloat16)
    acts = sae.encode(torch.randn(5, D_MODEL, dtype=torch.bfloat16))
    assert acts.dtype == torch.bfloat16 and torch.isfinite(acts.float()).all()


def test_runner_checkpoint_encodes_like_the_final_model_saved_from_the_same_weights(
    tiny_model, tmp_path
):
    """Issue 10.1 end to end: a checkpoint written by SAELens's runner opens with
    ``SAE.load_from_disk`` and encodes exactly as the inference model saved from it."""
    cfg = configure_runner(
        tiny_runner_cfg(
            output_path=tmp_path / "out",
            n_checkpoints=1,
            checkpoint_path=str(tmp_path / "ckpts"),
        )
    )
    LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset()
    ).run()
    (checkpoint,) = [p for p in (tmp_path / "ckpts").glob("*/*") if p.is_dir()]
    as_inference = SAE.load_from_disk(checkpoint)
    assert type(as_inference) is SoftSAE
    as_training = TrainingSAE.load_from_disk(checkpoint)
    as_training.save_inference_model(tmp_path / "final_from_checkpoint")
    final = SAE.load_from_disk(tmp_path / "final_from_checkpoint")
    x = torch.randn(32, D_MODEL) * 2
    torch.testing.assert_close(as_inference.predict_k(x), final.predict_k(x))
    torch.testing.assert_close(as_inference.encode(x), final.encode(x), atol=1e-5, rtol=1e-5)
