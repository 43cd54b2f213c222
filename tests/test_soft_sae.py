import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import CONTEXT, D_MODEL, tiny_runner_cfg, token_dataset, train_step_input
from sae_lens import (
    SAE,
    LanguageModelSAETrainingRunner,
    TrainingSAE,
)
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

import softsae_lens
from softsae_lens import (
    SoftSAE,
    SoftSAEConfig,
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
    configure_runner,
)

HOOK = "blocks.0.hook_resid_post"


def make_training_sae(d_in=D_MODEL, d_sae=128, k=8, seed=0, **kwargs) -> SoftTrainingSAE:
    """A training SoftSAE with non-trivial weights (so k_hat varies and norms are not 1)."""
    torch.manual_seed(seed)
    kwargs.setdefault("total_training_steps", 100)
    sae = SoftTrainingSAE(SoftTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **kwargs))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(d_sae, 1) * 2 + 0.5)
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
        sae.W_k_out.normal_(0, 0.5)
        sae.b_k_in.normal_(0, 0.1)
    sae.cfg.metadata.hook_name = HOOK
    return sae


def inference_copy(sae: SoftTrainingSAE, tmp_path) -> SoftSAE:
    sae.save_inference_model(tmp_path / "inference")
    return SAE.load_from_disk(tmp_path / "inference")


# ---------------------------------------------------------------- configs


def test_defaults_follow_the_paper_where_measured():
    cfg = SoftTrainingSAEConfig(d_in=64, d_sae=512, k=20)
    assert cfg.k_max == 40.0 and cfg.k_estimator_width == 128 and cfg.k_target_start == 64.0
    assert (
        cfg.k_loss_coefficient == 1.0
        and cfg.k_loss_beta == 5.0
        and cfg.aux_loss_coefficient == 1 / 32
    )
    assert cfg.alpha_start == 1.0 and cfg.alpha_end < cfg.alpha_start
    assert cfg.architecture() == "soft"


def test_training_config_round_trip():
    cfg = SoftTrainingSAEConfig(
        d_in=16, d_sae=64, k=4, k_max=9.5, alpha_end=1e-3, total_training_steps=7
    )
    restored = TrainingSAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert isinstance(restored, SoftTrainingSAEConfig)
    assert restored.to_dict() == cfg.to_dict()


def test_inference_config_round_trip():
    cfg = SoftSAEConfig(d_in=16, d_sae=64, k=4, k_rounding="floor")
    restored = SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert isinstance(restored, SoftSAEConfig) and restored.to_dict() == cfg.to_dict()
    training = SoftTrainingSAEConfig(d_in=16, d_sae=64, k=4, k_max=6.0, k_rounding="floor")
    inference = SAEConfig.from_dict(training.get_inference_sae_cfg_dict())
    assert isinstance(inference, SoftSAEConfig)
    assert (inference.k, inference.k_max, inference.k_rounding) == (4, 6.0, "floor")
    details = inference.metadata.training_architecture_details
    assert details["alpha_end"] == training.alpha_end and "k_max" not in details


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), r"k must be a positive integer .* got k=0"),
        (dict(k=-3), r"k must be a positive integer"),
        (dict(k=2.5), r"k must be a positive integer"),
        (dict(k=100), r"k must be at most d_sae=64, got k=100"),
        (dict(k_max=3.0), r"k_max must be >= k=4 .* got k_max=3.0"),
        (dict(k_max=65.0), r"k_max must be <= d_sae=64, got k_max=65.0"),
        (dict(k_rounding="ceil"), r"k_rounding must be 'round' or 'floor', got k_rounding='ceil'"),
        (dict(alpha_end=2.0), r"alpha_end must be <= alpha_start=1.0 .* got alpha_end=2.0"),
        (dict(alpha_end=0.0), r"alpha_end must be positive, got alpha_end=0.0"),
        (dict(alpha_start=-1.0), r"alpha_start must be positive and finite"),
        (dict(alpha_scale="auto"), r"alpha_scale must be 'absolute' or 'relative'"),
        (
            dict(hard_topk_fraction=1.0),
            r"hard_topk_fraction must be in \[0, 1\), got hard_topk_fraction=1.0",
        ),
        (dict(k_anneal_fraction=1.5), r"k_anneal_fraction must be in \[0, 1\]"),
        (dict(total_training_steps=0), r"total_training_steps must be a positive integer or None"),
        (dict(k_target_start=2.0), r"k_target_start must be >= k=4"),
        (dict(k_loss_beta=0.0), r"k_loss_beta must be > 0"),
    ],
)
def test_bad_training_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftTrainingSAEConfig(d_in=16, d_sae=64, **{"k": 4, **kwargs})


def test_defaults_are_valid_whatever_d_in_and_k():
    # d_in below k: the old default start (d_in) failed its own check
    cfg = SoftTrainingSAEConfig(d_in=64, d_sae=1024, k=100)
    assert cfg.k_target_start == cfg.k_max == 200.0
    assert SoftTrainingSAEConfig(d_in=512, d_sae=1024, k=8).k_target_start == 512.0


FLOAT_FIELDS = [
    "k_max",
    "k_loss_coefficient",
    "k_loss_beta",
    "k_target_start",
    "k_anneal_fraction",
    "alpha_start",
    "alpha_end",
    "alpha_anneal_fraction",
    "hard_topk_fraction",
    "aux_loss_coefficient",
    "k_scale_decay",
]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), "x", True])
def test_every_float_field_rejects_non_finite_and_non_numbers(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number, got {name}="):
        SoftTrainingSAEConfig(d_in=16, d_sae=64, k=4, **{name: value})


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("k_loss_scale", "MSE", "'mse' or 'absolute'"),
        ("k_budget", "constraint", "'normalize' or 'penalty'"),
        ("alpha_scale", "Relative", "'absolute' or 'relative'"),
        ("k_rounding", "ceil", "'round' or 'floor'"),
        ("soft_topk_grad_to_pre", "no", "True or False"),
        ("soft_topk_grad_to_pre", 1, "True or False"),
        ("rescale_acts_by_decoder_norm", "yes", "True or False"),
        ("total_training_steps", True, "a positive integer or None"),
        ("total_training_steps", 10.0, "a positive integer or None"),
        ("k_estimator_width", True, "a positive integer or None"),
        ("k", True, "a positive integer"),
        ("use_sparse_activations", True, "False"),
    ],
)
def test_literal_bool_and_int_fields_are_validated(name, value, allowed):
    with pytest.raises(ValueError, match=rf"^{name} must be {re.escape(allowed)}"):
        SoftTrainingSAEConfig(d_in=16, d_sae=64, **{"k": 4, name: value})


def test_inference_config_validates_its_fields_too():
    with pytest.raises(ValueError, match="^k_max must be a finite number, got k_max='x'"):
        SoftSAEConfig(d_in=4, d_sae=8, k=4, k_max="x")
    with pytest.raises(ValueError, match="^rescale_acts_by_decoder_norm must be True or False"):
        SoftSAEConfig(d_in=4, d_sae=8, k=4, rescale_acts_by_decoder_norm="no")


def test_bad_inference_config_raises():
    with pytest.raises(ValueError, match=r"k_max must be <= d_sae=8"):
        SoftSAEConfig(d_in=4, d_sae=8, k=4, k_max=9.0)


def test_registration_is_idempotent():
    from sae_lens.registry import get_sae_class, get_sae_training_class

    softsae_lens.register_soft_architecture()
    softsae_lens.register_soft_architecture()
    assert get_sae_class("soft") == (SoftSAE, SoftSAEConfig)
    assert get_sae_training_class("soft") == (SoftTrainingSAE, SoftTrainingSAEConfig)


def test_reload_replaces_the_registered_classes_with_the_new_objects(tmp_path):
    """A reload makes new class objects; SAELens must then build those, not the stale ones.
    Run in a subprocess: reloading here would leave this session's imports stale."""
    script = f"""
import importlib
import torch
import softsae_lens
from softsae_lens import registration, soft_sae
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class

old = soft_sae.SoftSAE
importlib.reload(soft_sae)
importlib.reload(registration)
registration.register_soft_architecture()
assert soft_sae.SoftSAE is not old
assert get_sae_class("soft") == (soft_sae.SoftSAE, soft_sae.SoftSAEConfig)
assert get_sae_training_class("soft")[0] is soft_sae.SoftTrainingSAE
soft_sae.SoftSAE(soft_sae.SoftSAEConfig(d_in=8, d_sae=32, k=4)).save_model(r"{tmp_path}")
assert type(SAE.load_from_disk(r"{tmp_path}")) is soft_sae.SoftSAE
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_registration_refuses_a_foreign_class():
    from sae_lens.registry import SAE_CLASS_REGISTRY

    saved = SAE_CLASS_REGISTRY["soft"]
    SAE_CLASS_REGISTRY["soft"] = (torch.nn.Module, SoftSAEConfig)
    try:
        with pytest.raises(
            ValueError, match="already registered to torch.nn.modules.module.Module"
        ):
            softsae_lens.register_soft_architecture()
    finally:
        SAE_CLASS_REGISTRY["soft"] = saved


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


# ---------------------------------------------------------------- training behaviour


def test_schedule_anneals_and_ends_hard():
    cfg = SoftTrainingSAEConfig(
        d_in=16,
        d_sae=64,
        k=4,
        total_training_steps=1000,
        k_anneal_fraction=0.1,
        alpha_anneal_fraction=0.2,
        alpha_start=1.0,
        alpha_end=0.01,
        hard_topk_fraction=0.05,
    )
    assert cfg.schedule(0).k_target == 16.0 and cfg.schedule(0).alpha == 1.0
    assert cfg.schedule(50).k_target == pytest.approx(10.0)
    assert cfg.schedule(100).k_target == 4.0 and cfg.schedule(500).k_target == 4.0
    assert cfg.schedule(100).alpha == pytest.approx(0.505)
    assert cfg.schedule(200).alpha == pytest.approx(0.01)
    assert not cfg.schedule(949).hard and cfg.schedule(950).hard


def test_schedule_is_a_pure_function_of_the_trainer_step():
    sae = make_training_sae(total_training_steps=100, k_anneal_fraction=0.5)
    seen = []
    original = sae.cfg.schedule
    sae.cfg.schedule = lambda step: seen.append(step) or original(step)
    x = torch.randn(16, D_MODEL)
    losses = [
        sae.training_forward_pass(train_step_input(x, step=10)).losses["k_loss"] for _ in range(4)
    ]
    assert seen == [10, 10, 10, 10]
    assert all(torch.equal(loss, losses[0]) for loss in losses)


def test_hard_phase_creates_every_tensor_on_the_sae_device():
    """On the meta device a tensor made on the CPU stands out (no GPU needed to see it)."""
    cfg = SoftTrainingSAEConfig(
        d_in=16, d_sae=64, k=4, total_training_steps=10, hard_topk_fraction=0.5, device="meta"
    )
    sae = SoftTrainingSAE(cfg)
    out = sae.training_forward_pass(train_step_input(torch.empty(8, 16, device="meta"), step=9))
    tensors = {**out.losses, **out.metrics, "loss": out.loss}
    assert out.metrics["softsae/hard_phase"] == 1
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta", name


def test_missing_run_length_raises_naming_the_field():
    sae = SoftTrainingSAE(SoftTrainingSAEConfig(d_in=16, d_sae=64, k=4))
    with pytest.raises(ValueError, match="SoftTrainingSAEConfig.total_training_steps is not set"):
        sae.training_forward_pass(train_step_input(torch.randn(8, 16)))


@pytest.mark.parametrize("grad_to_pre", [False, True])
def test_soft_phase_gradients_reach_encoder_decoder_and_k_estimator(grad_to_pre):
    sae = make_training_sae(
        soft_topk_grad_to_pre=grad_to_pre, alpha_scale="absolute", alpha_end=0.5
    )
    x = torch.randn(64, D_MODEL) * 3
    # step 2: the k target has annealed to k (before that, k_budget="normalize" puts every k
    # at the k_max ceiling, where the estimator has no gradient)
    out = sae.training_forward_pass(train_step_input(x, step=2))
    assert out.metrics["softsae/hard_phase"] == 0
    out.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_k_in", "b_k_in", "W_k_out", "b_k_out"):
        grad = getattr(sae, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the trainer's statistics see the hard selection inference would produce (inference's
    # k factor is the running average of the batches'; here set to this batch's)
    sae.k_scale.fill_(out.metrics["softsae/k_scale_batch"].item())
    torch.testing.assert_close(out.feature_acts, sae.encode(x))
    assert set(out.losses) == {"mse_loss", "k_loss", "auxiliary_reconstruction_loss"}


def _dense_soft_reference(sae: SoftTrainingSAE, x: torch.Tensor, step: int):
    """The soft phase written out densely with the public operator (no candidate shortcut)."""
    schedule = sae.cfg.schedule(step)
    sae_in = sae.process_sae_in(x)
    hidden_pre = sae._hidden_pre(sae_in)
    k_raw = sae._predict_raw_k_from_sae_in(sae_in)
    # k_budget="normalize": the batch mean of k is the target, under the k_max ceiling
    k_hat = (k_raw * schedule.k_target / k_raw.mean()).clamp(max=sae.cfg.k_max)
    relu_pre = hidden_pre.relu()
    alpha = sae.soft_alpha(hidden_pre, schedule.alpha)
    weights = softsae_lens.soft_topk(relu_pre.detach(), k_hat, alpha)
    sae_out = sae.decode_dense(relu_pre * weights)
    mse = (sae_out - x).pow(2).sum(-1).mean()
    return sae_out, mse + sae.k_loss(k_raw.mean(), schedule.k_target, mse)


@pytest.mark.parametrize("step, candidates_only", [(50, True), (0, False)])
def test_soft_phase_equals_the_dense_formula(step, candidates_only):
    """After the alpha anneal the soft phase runs on each row's top candidates only; early on
    (alpha large) it takes the dense path. Both must match the dense formula, gradients too."""
    sae = make_training_sae(d_sae=512, k=8, total_training_steps=1000, aux_loss_coefficient=0.0)
    x = torch.randn(48, D_MODEL) * 3
    out = sae.training_forward_pass(train_step_input(x, step=step))
    assert out.metrics["softsae/candidates_only"] == int(candidates_only)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    ref_out, ref_loss = _dense_soft_reference(sae, x, step)
    ref_loss.backward()
    torch.testing.assert_close(out.sae_out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_decode_of_sparse_activations_equals_the_dense_product(tmp_path):
    sae = inference_copy(make_training_sae(d_sae=512, k=8), tmp_path).double()
    x = torch.randn(4, 6, D_MODEL, dtype=torch.float64) * 3
    acts = sae.encode(x)
    assert ((acts != 0).sum(-1) <= sae.hard_width).all()
    torch.testing.assert_close(sae.decode(acts), sae.decode_dense(acts), atol=1e-12, rtol=1e-12)
    # denser than any encode (a hook that switched latents on): still the exact product
    dense = acts.clone()
    dense[..., : sae.hard_width + 5] = 1.0
    torch.testing.assert_close(sae.decode(dense), sae.decode_dense(dense), atol=1e-12, rtol=1e-12)
    # negative values a steering hook might write are decoded too
    acts[..., 3] = -2.0
    torch.testing.assert_close(sae.decode(acts), sae.decode_dense(acts), atol=1e-12, rtol=1e-12)


def test_encode_and_decode_work_under_inference_mode(tmp_path):
    # sae-probes (SAEBench's sparse probing) encodes under torch.inference_mode, where tensors
    # keep no version counter: encode must not read one, and decode must still be exact.
    sae = inference_copy(make_training_sae(d_sae=512, k=8), tmp_path).double()
    x = torch.randn(5, D_MODEL, dtype=torch.float64) * 3
    with torch.no_grad():
        expected = sae.encode(x)
    with torch.inference_mode():
        acts = sae.encode(x)
        assert not hasattr(acts, "_softsae_active")
        torch.testing.assert_close(acts, expected)
        torch.testing.assert_close(sae.decode(acts), sae.decode_dense(acts), atol=1e-12, rtol=1e-12)


def test_decode_reuses_encodes_indices_only_for_untouched_activations(tmp_path):
    sae = inference_copy(make_training_sae(d_sae=512, k=8), tmp_path).double()
    x = torch.randn(5, D_MODEL, dtype=torch.float64) * 3
    acts = sae.encode(x)
    version, indices = acts._softsae_active  # what decode reuses instead of a top-k search
    assert version == acts._version and indices.shape == (5, sae.hard_width)
    acts.retain_grad()
    sae.decode(acts).sum().backward()
    # an attribution gradient reaches inactive latents too, as through the dense product
    torch.testing.assert_close(
        acts.grad, (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)).sum(-1).expand(5, -1)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            sae.decode(sae.encode(x)), sae.decode_dense(acts), atol=1e-12, rtol=1e-12
        )
    with torch.no_grad():
        # an in-place hook that switches a latent on voids the remembered indices
        sae.hook_sae_acts_post.add_hook(lambda a, hook: a.index_fill_(-1, torch.tensor([7]), 2.0))
        try:
            hooked = sae.encode(x)
        finally:
            sae.reset_hooks()
        assert (hooked[:, 7] == 2.0).all()
        torch.testing.assert_close(
            sae.decode(hooked), sae.decode_dense(hooked), atol=1e-12, rtol=1e-12
        )


def test_hard_phase_decodes_what_a_hook_on_the_activations_returns():
    sae = make_training_sae(total_training_steps=100, hard_topk_fraction=0.1)
    x = torch.randn(16, D_MODEL) * 3
    plain = sae.training_forward_pass(train_step_input(x, step=95))
    torch.testing.assert_close(
        plain.sae_out, sae.decode_dense(plain.feature_acts), atol=1e-5, rtol=1e-5
    )
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: acts * 2)
    try:
        hooked = sae.training_forward_pass(train_step_input(x, step=95))
    finally:
        sae.reset_hooks()
    torch.testing.assert_close(
        hooked.sae_out, sae.decode_dense(hooked.feature_acts), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(hooked.sae_out, plain.sae_out)


def test_hard_phase_trains_encoder_and_decoder_but_freezes_k():
    sae = make_training_sae(total_training_steps=100, hard_topk_fraction=0.1)
    x = torch.randn(64, D_MODEL) * 3
    out = sae.training_forward_pass(train_step_input(x, step=95))
    assert out.metrics["softsae/hard_phase"] == 1
    out.loss.backward()
    assert sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0
    assert sae.W_k_in.grad is None and sae.W_k_out.grad is None
    sae.k_scale.fill_(out.metrics["softsae/k_scale_batch"].item())  # this batch's k factor
    torch.testing.assert_close(out.sae_out, sae(x))


def test_k_loss_is_one_sided():
    sae = make_training_sae(
        total_training_steps=100,
        k_anneal_fraction=0.0,
        k_loss_scale="absolute",
        k_budget="penalty",
    )
    x = torch.randn(32, D_MODEL)
    with torch.no_grad():
        sae.b_k_out.fill_(6.0)  # k_hat near k_max = 2k, above the target k
    high = sae.training_forward_pass(train_step_input(x, step=10)).losses["k_loss"]
    with torch.no_grad():
        sae.b_k_out.fill_(-6.0)  # k_hat far below the target
    low = sae.training_forward_pass(train_step_input(x, step=10)).losses["k_loss"]
    assert high > 5.0 and low < 1e-6


def test_k_loss_mse_scale_prices_a_latent_at_its_share_of_the_error():
    x = torch.randn(32, D_MODEL) * 4
    absolute = make_training_sae(k_anneal_fraction=0.0, k_loss_scale="absolute", k_budget="penalty")
    relative = make_training_sae(k_anneal_fraction=0.0, k_loss_scale="mse", k_budget="penalty")
    for sae in (absolute, relative):
        with torch.no_grad():
            sae.b_k_out.fill_(6.0)
    out_abs = absolute.training_forward_pass(train_step_input(x, step=10))
    out_rel = relative.training_forward_pass(train_step_input(x, step=10))
    expected = out_abs.losses["k_loss"] * out_rel.losses["mse_loss"].detach() / relative.cfg.k
    torch.testing.assert_close(out_rel.losses["k_loss"], expected)
    assert out_rel.losses["k_loss"].requires_grad and out_rel.losses["k_loss"] > 0


def test_aux_loss_only_with_dead_latents():
    sae = make_training_sae()
    x = torch.randn(16, D_MODEL)
    none_dead = sae.training_forward_pass(
        train_step_input(x, dead=torch.zeros(128, dtype=torch.bool))
    )
    all_dead = sae.training_forward_pass(
        train_step_input(x, dead=torch.ones(128, dtype=torch.bool))
    )
    assert none_dead.losses["auxiliary_reconstruction_loss"] == 0
    assert all_dead.losses["auxiliary_reconstruction_loss"] > 0


def test_k_hat_is_float32_under_bf16_autocast():
    sae = make_training_sae()
    x = torch.randn(16, D_MODEL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.training_forward_pass(train_step_input(x, step=0))
        k_hat = sae.predict_k(x)
    assert k_hat.dtype == torch.float32
    torch.testing.assert_close(k_hat, sae.predict_k(x))
    assert torch.isfinite(out.loss)


def test_train_toy_sae_with_run_length(tmp_path):
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, train_toy_sae

    fd = FeatureDictionary(num_features=64, hidden_dim=16)
    gen = ActivationGenerator(num_features=64, firing_probabilities=torch.full((64,), 0.08))
    samples, batch = 64 * 40, 64
    sae = SoftTrainingSAE(
        SoftTrainingSAEConfig(d_in=16, d_sae=64, k=5, total_training_steps=samples // batch)
    )
    train_toy_sae(sae, fd, gen, training_samples=samples, batch_size=batch, lr=3e-3)
    bare = SoftTrainingSAE(SoftTrainingSAEConfig(d_in=16, d_sae=64, k=5))
    with pytest.raises(ValueError, match="total_training_steps is not set"):
        train_toy_sae(bare, fd, gen, training_samples=samples, batch_size=batch)


# ---------------------------------------------------------------- TransformerLens / SAELens integration


def test_hooked_sae_transformer_cache_error_term_and_k_override(tiny_model, tmp_path):
    sae = inference_copy(make_training_sae(), tmp_path)
    tokens = torch.randint(1, 90, (2, CONTEXT), generator=torch.Generator().manual_seed(0))
    clean = tiny_model(tokens)
    _, cache = tiny_model.run_with_cache_with_saes(tokens, saes=[sae])
    k_name = f"{HOOK}.hook_sae_k"
    assert cache[k_name].shape == (2, CONTEXT)
    torch.testing.assert_close(cache[k_name], sae.predict_k(cache[f"{HOOK}.hook_sae_input"]))
    acts_name = f"{HOOK}.hook_sae_acts_post"
    assert ((cache[acts_name] != 0).sum(-1) > 1).any()

    tiny_model.add_sae(sae, use_error_term=True)
    try:
        torch.testing.assert_close(tiny_model(tokens), clean, atol=1e-4, rtol=1e-4)
        forced = {}
        tiny_model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (k_name, lambda k, hook: torch.ones_like(k)),
                (acts_name, lambda a, hook: forced.update(l0=(a != 0).sum(-1))),
            ],
        )
        assert (forced["l0"] == 1).all()
    finally:
        tiny_model.reset_saes()


def _runner_cfg(tmp_path, **overrides):
    overrides.setdefault("output_path", tmp_path / "out")
    return tiny_runner_cfg(**overrides)


def test_runner_trains_saves_and_reloads(tiny_model, tmp_path):
    cfg = configure_runner(_runner_cfg(tmp_path))
    assert cfg.sae.total_training_steps == 40
    trained = LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset()
    ).run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert type(loaded) is SoftSAE and loaded.cfg.metadata.hook_name == HOOK
    x = torch.randn(10, D_MODEL)
    trained.eval()
    torch.testing.assert_close(loaded(x), trained(x), atol=1e-5, rtol=1e-5)
    assert 1 <= loaded.cfg.metadata.l0 <= loaded.cfg.k_max


def test_runner_without_configure_runner_fails_clearly(tiny_model, tmp_path):
    runner = LanguageModelSAETrainingRunner(
        _runner_cfg(tmp_path), override_model=tiny_model, override_dataset=token_dataset()
    )
    with pytest.raises(ValueError, match="total_training_steps is not set"):
        runner.run()


def test_configure_runner_rejects_a_mismatched_length(tmp_path):
    cfg = _runner_cfg(
        tmp_path, sae=SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=128, k=8, total_training_steps=7)
    )
    with pytest.raises(
        ValueError, match=r"sae.total_training_steps=7 but the runner config trains for 40 steps"
    ):
        configure_runner(cfg)


def test_resume_continues_the_schedule(tiny_model, tmp_path):
    cfg = configure_runner(
        _runner_cfg(tmp_path, n_checkpoints=1, checkpoint_path=str(tmp_path / "ckpts"))
    )
    LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset()
    ).run()
    (checkpoint,) = [p for p in (tmp_path / "ckpts").glob("*/*") if p.is_dir()]
    resumed_cfg = configure_runner(
        _runner_cfg(tmp_path, resume_from_checkpoint=str(checkpoint), output_path=None)
    )
    runner = LanguageModelSAETrainingRunner(
        resumed_cfg, override_model=tiny_model, override_dataset=token_dataset()
    )
    schedule_steps = []
    original = runner.sae.cfg.schedule

    def spy(step):
        schedule_steps.append(step)
        return original(step)

    runner.sae.cfg.schedule = spy
    runner.run()
    # SAELens resumes with the index of the last completed step; the schedule must not repeat it
    state = torch.load(checkpoint / "trainer_state.pt")
    completed = state["n_training_samples"] // 128
    assert state["n_training_steps"] == completed - 1
    assert schedule_steps == list(range(completed, 40))


@pytest.mark.slow
def test_runner_compile_sae_trains_soft(tiny_model, tmp_path):
    """SAELens's ``compile_sae=True`` (torch.compile with inductor) on "soft": the compiled step
    gives the eager step's outputs in both phases, and the run trains as well as an eager one.
    Alpha starts at its floor, so the soft phase takes the candidate path from the first step
    (the dense path, a few steps of a real run, would triple inductor's compile time here)."""
    torch.manual_seed(0)
    held_out = torch.randn(256, D_MODEL)
    trained = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        sae_cfg = SoftTrainingSAEConfig(
            d_in=D_MODEL, d_sae=128, k=8, alpha_anneal_fraction=0.0, k_anneal_fraction=0.0
        )
        cfg = configure_runner(
            _runner_cfg(tmp_path / str(compiled), compile_sae=compiled, sae=sae_cfg)
        )
        runner = LanguageModelSAETrainingRunner(
            cfg, override_model=tiny_model, override_dataset=token_dataset()
        )
        trained[compiled] = runner.run()
    sae = trained[True]
    compiled_step = sae.training_forward_pass
    assert compiled_step is not SoftTrainingSAE.training_forward_pass.__get__(sae)
    x = held_out[:64]
    for step in (20, 39):  # the soft phase (candidate path), the hard phase
        got = compiled_step(train_step_input(x, step=step))
        want = SoftTrainingSAE.training_forward_pass(sae, train_step_input(x, step=step))
        assert got.metrics["softsae/hard_phase"] == want.metrics["softsae/hard_phase"]
        assert got.metrics["softsae/candidates_only"] == 1
        torch.testing.assert_close(got.loss, want.loss, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.sae_out, want.sae_out, atol=1e-4, rtol=1e-4)
    errors = {
        compiled: (s.eval()(held_out) - held_out).pow(2).sum(-1).mean().item()
        for compiled, s in trained.items()
    }
    assert errors[True] < 1.1 * errors[False], errors


def test_run_evals_l0_equals_mean_rounded_k_hat(tiny_model, tmp_path):
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    sae = inference_copy(make_training_sae(), tmp_path)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every latent positive, so L0 equals the selected k exactly
    store = ActivationsStore.from_config(
        tiny_model, _runner_cfg(tmp_path), override_dataset=token_dataset(64, seed=3)
    )
    cfg = EvalConfig(
        n_eval_reconstruction_batches=2,
        n_eval_sparsity_variance_batches=2,
        batch_size_prompts=4,
        compute_ce_loss=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(
        sae, store, tiny_model, ActivationScaler(), cfg, exclude_special_tokens=False
    )
    l0 = metrics["sparsity"]["l0"]
    acts = store.get_batch_tokens(8)
    _, cache = tiny_model.run_with_cache(acts, names_filter=HOOK)
    k_int = sae.round_k(sae.predict_k(cache[HOOK])).float()
    assert 1 <= l0 <= sae.cfg.k_max
    assert abs(l0 - k_int.mean().item()) < 0.15 * k_int.mean().item()
    assert torch.isfinite(torch.tensor(metrics["model_performance_preservation"]["ce_loss_score"]))


def test_run_evals_l0_is_exactly_mean_rounded_k_hat_on_a_fixed_batch(tiny_model, tmp_path):
    # run_evals' L0 is the mean of (acts != 0).sum(-1); check that identity on a fixed batch
    sae = inference_copy(make_training_sae(), tmp_path)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)
    tokens = torch.randint(1, 90, (4, CONTEXT), generator=torch.Generator().manual_seed(5))
    _, cache = tiny_model.run_with_cache_with_saes(tokens, saes=[sae])
    l0 = (cache[f"{HOOK}.hook_sae_acts_post"] != 0).sum(-1).float()
    assert torch.equal(l0, sae.round_k(cache[f"{HOOK}.hook_sae_k"]).float())


# ---------------------------------------------------------------- CLI


def test_cli_parses_architecture_soft_and_fills_run_length():
    from softsae_lens.train import parse_args

    cfg = parse_args(
        [
            "--architecture",
            "soft",
            "--d_in",
            "32",
            "--d_sae",
            "256",
            "--k",
            "16",
            "--alpha_end",
            "0.005",
            "--model_name",
            "tiny",
            "--hook_name",
            HOOK,
            "--training_tokens",
            "4096",
            "--train_batch_size_tokens",
            "512",
        ]
    )
    assert isinstance(cfg.sae, SoftTrainingSAEConfig)
    assert (cfg.sae.d_sae, cfg.sae.k, cfg.sae.alpha_end, cfg.sae.total_training_steps) == (
        256,
        16,
        0.005,
        8,
    )


def test_cli_help_lists_soft_fields():
    out = subprocess.run(
        [sys.executable, "-m", "softsae_lens.train", "--architecture", "soft", "--help"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: imports alone took 46 s on a loaded 2-core machine
    )
    assert out.returncode == 0, out.stderr
    for flag in (
        "--k_max",
        "--alpha_end",
        "--soft_topk_grad_to_pre",
        "--hard_topk_fraction",
        "soft",
    ):
        assert flag in out.stdout, flag


# ---------------------------------------------------------------- the k budget (k_budget)


def _train_where_latents_pay(k_budget: str, steps: int = 1500):
    """SoftSAE (k 8) trained on 64 learnable features in 32 dims, each input holding ~16 of
    them: every extra latent buys reconstruction, which is where a price per latent drifts."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, train_toy_sae

    torch.manual_seed(0)
    fd = FeatureDictionary(64, 32, seed=0)
    gen = ActivationGenerator(num_features=64, firing_probabilities=torch.full((64,), 0.25))
    cfg = SoftTrainingSAEConfig(
        d_in=32, d_sae=128, k=8, k_budget=k_budget, total_training_steps=steps
    )
    sae = SoftTrainingSAE(cfg)
    train_toy_sae(sae, fd, gen, training_samples=steps * 256, batch_size=256, lr=3e-3)
    sae.eval()
    with torch.no_grad():
        x = fd(gen(4096))
        return (sae.encode(x) != 0).sum(-1).float(), sae.predict_k(x)


@pytest.mark.slow
def test_k_budget_normalize_holds_mean_l0_where_the_penalty_drifts():
    drifted, _ = _train_where_latents_pay("penalty")
    held, k_hat = _train_where_latents_pay("normalize")
    # the old penalty is a price per latent: here it buys more than it costs
    assert drifted.mean() > 8 * 1.05, drifted.mean()
    # the constraint holds the mean L0 within 3% of k, and keeps a per-input spread
    assert abs(held.mean().item() - 8) <= 0.03 * 8, held.mean()
    assert k_hat.quantile(0.95) - k_hat.quantile(0.05) > 2.0


def test_k_budget_normalize_sets_the_batch_mean_and_averages_the_factor():
    sae = make_training_sae(total_training_steps=100, k_anneal_fraction=0.0)
    x = torch.randn(64, D_MODEL) * 3
    out = sae.training_forward_pass(train_step_input(x, step=10))
    k_raw = sae.predict_k(x) / sae.k_scale  # before this step's update the factor was 1
    scale = out.metrics["softsae/k_scale_batch"]
    torch.testing.assert_close(scale, sae.cfg.k / out.metrics["softsae/k_raw_mean"])
    k_used = (k_raw * scale).clamp(max=sae.cfg.k_max)
    # what the step used: the hard selection at round(k_used)
    torch.testing.assert_close((out.feature_acts != 0).sum(-1).float(), sae.round_k(k_used).float())
    # the running factor moved towards this batch's (bias-corrected first step: most of the way)
    assert abs(sae.k_scale.item() - scale.item()) < abs(1.0 - scale.item())


def test_k_budget_normalize_anneal_leaves_the_running_factor_alone():
    sae = make_training_sae(total_training_steps=100, k_anneal_fraction=0.5)
    sae.training_forward_pass(train_step_input(torch.randn(32, D_MODEL), step=10))
    assert sae.k_scale.item() == 1.0


def test_k_scale_saves_loads_and_old_checkpoints_default_to_one(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = make_training_sae()
    sae.k_scale.fill_(1.25)
    x = torch.randn(6, D_MODEL) * 3
    loaded = inference_copy(sae, tmp_path)
    assert loaded.k_scale.item() == 1.25
    torch.testing.assert_close(loaded.predict_k(x), sae.predict_k(x))
    # an SAE saved before k_budget existed has no k_scale: it predicted k_raw
    weights = tmp_path / "inference" / "sae_weights.safetensors"
    state = load_file(weights)
    del state["k_scale"]
    save_file(state, weights)
    old = SAE.load_from_disk(tmp_path / "inference")
    assert old.k_scale.item() == 1.0
    torch.testing.assert_close(old.predict_k(x) * 1.25, sae.predict_k(x).clamp(max=16.0))


def test_k_budget_penalty_keeps_the_factor_at_one():
    sae = make_training_sae(total_training_steps=100, k_anneal_fraction=0.0, k_budget="penalty")
    out = sae.training_forward_pass(train_step_input(torch.randn(32, D_MODEL), step=10))
    assert out.metrics["softsae/k_scale_batch"].item() == 1.0 and sae.k_scale.item() == 1.0


def test_k_budget_hard_phase_restarts_the_running_factor_from_a_plain_mean_level():
    sae = make_training_sae(total_training_steps=100, hard_topk_fraction=0.1)
    sae.k_scale.fill_(5.0)  # what a lagging soft-phase average might hold
    metrics = []
    for i, step in enumerate(range(90, 94)):
        x = torch.randn(32, D_MODEL) * (1 + i)
        metrics.append(sae.training_forward_pass(train_step_input(x, step=step)).metrics)
    # k over the phase's mean raw level: a ratio of means, not the mean of the batch ratios.
    level = sum(m["softsae/k_raw_mean"].item() for m in metrics) / len(metrics)
    assert sae.k_scale.item() == pytest.approx(sae.cfg.k / level, rel=1e-5)
    ratios = [m["softsae/k_scale_batch"].item() for m in metrics]
    assert sae.k_scale.item() < sum(ratios) / len(ratios)
