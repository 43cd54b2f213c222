"""SoftTrainingSAE: the schedule, the soft and hard phases, the losses and the k budget."""

import dataclasses
import logging

import pytest
import torch
from helpers import (
    D_MODEL,
    inference_copy,
    make_training_sae,
    train_step_input,
)
from sae_lens import (
    SAE,
)

import softsae_lens
from softsae_lens import (
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
)

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
    # A floor of 0.01 puts every left-out weight under float32 rounding on these inputs, so
    # step 50 takes the candidate path; the default floor's weights reach further down.
    sae = make_training_sae(
        d_sae=512, k=8, total_training_steps=1000, aux_loss_coefficient=0.0, alpha_end=0.01
    )
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


# ---------------------------------------------------------------- the k budget (k_budget)


def _train_where_latents_pay(k_budget: str, steps: int = 1500, **overrides):
    """SoftSAE (k 8) trained on 64 learnable features in 32 dims, each input holding ~16 of
    them: every extra latent buys reconstruction, which is where a price per latent drifts."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, train_toy_sae

    torch.manual_seed(0)
    fd = FeatureDictionary(64, 32, seed=0)
    gen = ActivationGenerator(num_features=64, firing_probabilities=torch.full((64,), 0.25))
    cfg = SoftTrainingSAEConfig(
        d_in=32, d_sae=128, k=8, k_budget=k_budget, total_training_steps=steps, **overrides
    )
    sae = SoftTrainingSAE(cfg)
    train_toy_sae(sae, fd, gen, training_samples=steps * 256, batch_size=256, lr=3e-3)
    sae.eval()
    with torch.no_grad():
        x = fd(gen(4096))
        return (sae.encode(x) != 0).sum(-1).float(), sae.predict_k(x)


@pytest.mark.slow
def test_k_budget_normalize_holds_mean_l0_where_the_penalty_drifts():
    # the alpha floor the constraint was built at, 0.01 (the default since is the next test's)
    drifted, _ = _train_where_latents_pay("penalty", alpha_end=0.01)
    held, k_hat = _train_where_latents_pay("normalize", alpha_end=0.01)
    # the old penalty is a price per latent: here it buys more than it costs
    assert drifted.mean() > 8 * 1.05, drifted.mean()
    # the constraint holds the mean L0 within 3% of k, and keeps a per-input spread
    assert abs(held.mean().item() - 8) <= 0.03 * 8, held.mean()
    assert k_hat.quantile(0.95) - k_hat.quantile(0.05) > 2.0


@pytest.mark.slow
def test_k_budget_normalize_holds_mean_l0_at_the_default_alpha_floor():
    # at the floor 0.05 b_dec moves in the hard phase and the frozen estimator's raw level climbs
    # with it (8.1 -> 10.0 here): a plain mean over the phase (k_scale_decay 0.99) gave L0 8.86
    # (k_scale_reservoir 0: the running average alone, as before the reservoir)
    held, _ = _train_where_latents_pay("normalize", k_scale_reservoir=0)
    assert abs(held.mean().item() - 8) <= 0.03 * 8, held.mean()
    lagging, _ = _train_where_latents_pay("normalize", k_scale_reservoir=0, k_scale_decay=0.99)
    assert lagging.mean() > 8 * 1.05, lagging.mean()
    # the default re-reads the factor at the last step, with the final b_dec, from inputs kept
    # over the whole run: the average's length no longer matters
    slow_average, _ = _train_where_latents_pay("normalize", k_scale_decay=0.99)
    assert abs(slow_average.mean().item() - 8) <= 0.03 * 8, slow_average.mean()


@pytest.mark.slow
def test_the_switch_to_hard_top_k_warns_where_soft_weights_spread_inputs_over_more_latents(caplog):
    # 16 true features per input and k 8: at the alpha floor 0.05 the soft weights come to
    # spread each input over more than k latents at partial weight (here from about step 500;
    # runs of 700 or 1,000 steps had not got there), which the hard top-k of inference undoes
    with caplog.at_level(logging.WARNING, logger="softsae_lens.soft_sae"):
        _train_where_latents_pay("normalize")
    (switch,) = [r for r in caplog.records if "switched to hard top-k" in r.getMessage()]
    ratio = float(switch.getMessage().split("error ")[1].split("x")[0])
    assert ratio > 10, switch.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="softsae_lens.soft_sae"):
        _train_where_latents_pay("normalize", alpha_end=0.01)
        _train_where_latents_pay("normalize", hard_selection_loss_coefficient=1.0)
    assert not [r for r in caplog.records if "switched to hard top-k" in r.getMessage()]


def test_hard_selection_loss_trains_the_inference_selection_in_the_soft_phase_only():
    sae = make_training_sae(total_training_steps=100, hard_selection_loss_coefficient=0.5)
    x = torch.randn(32, D_MODEL) * 3
    soft = sae.training_forward_pass(train_step_input(x, step=50))
    term = soft.losses["hard_selection_loss"]
    torch.testing.assert_close(term, 0.5 * soft.metrics["softsae/hard_selection_mse"])
    torch.testing.assert_close(soft.loss, sum(soft.losses.values()))
    (grad,) = torch.autograd.grad(term, sae.W_dec)
    assert grad.abs().sum() > 0
    hard = sae.training_forward_pass(train_step_input(x, step=99))
    assert hard.losses["hard_selection_loss"] == 0
    off = make_training_sae(total_training_steps=100)
    assert "hard_selection_loss" not in off.training_forward_pass(train_step_input(x)).losses
    with pytest.raises(ValueError, match="hard_selection_loss_coefficient"):
        SoftTrainingSAEConfig(d_in=8, d_sae=16, k=2, hard_selection_loss_coefficient=-1.0)


def test_hard_selection_mse_is_the_hard_top_k_error_in_the_soft_phase_and_the_loss_after():
    sae = make_training_sae(total_training_steps=100)
    x = torch.randn(32, D_MODEL) * 3
    # computed where it is logged (and on the last soft step, for the switch's warning)
    quiet = sae.training_forward_pass(train_step_input(x, step=50))
    assert "softsae/hard_selection_mse" not in quiet.metrics
    logged_step = dataclasses.replace(train_step_input(x, step=50), is_logging_step=True)
    soft = sae.training_forward_pass(logged_step)
    with torch.no_grad():
        # feature_acts is the hard top-k at the step's k: what the switch would decode
        expected = sae.mse_loss_fn(sae.decode(soft.feature_acts), x).sum(-1).mean()
    torch.testing.assert_close(soft.metrics["softsae/hard_selection_mse"], expected)
    assert not torch.allclose(expected, soft.losses["mse_loss"])
    hard = sae.training_forward_pass(train_step_input(x, step=99))
    torch.testing.assert_close(hard.metrics["softsae/hard_selection_mse"], hard.losses["mse_loss"])


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


def _kept(sae, step, batch_rows):
    from softsae_lens.soft_reservoir import held_rows

    rows = sae.k_scale_reservoir_rows
    return rows[held_rows(rows, (step + 1) * batch_rows).bool()]


def _raw_level(sae, rows):
    with torch.no_grad():
        return sae._predict_raw_k_from_sae_in(sae.process_sae_in(rows)).mean()


def test_reservoir_keeps_a_uniform_sample_of_every_training_row(tmp_path):
    sae = make_training_sae(total_training_steps=1000, k_scale_reservoir=256)
    rows_seen = []
    for step in range(40):
        x = torch.randn(64, D_MODEL)
        x[:, 0] = torch.arange(step * 64, (step + 1) * 64)  # each row's index in the stream
        rows_seen.append(x)
        sae.training_forward_pass(train_step_input(x, step=step))
    kept = _kept(sae, 39, 64)
    assert kept.shape == (256, D_MODEL)
    ids = kept[:, 0].long()
    assert ids.unique().numel() == 256  # every slot a different row ...
    torch.testing.assert_close(kept, torch.cat(rows_seen)[ids])  # ... kept as it came in
    # uniform over the stream: mean index 1279.5 (sd of the mean ~46), half from each half
    assert abs(ids.float().mean().item() - 1279.5) < 200, ids.float().mean()
    assert 0.37 < (ids < 1280).float().mean().item() < 0.63
    # training state: in the training SAE's state (checkpoints), not in the inference SAE
    assert "k_scale_reservoir_rows" in sae.state_dict()
    inference = inference_copy(sae, tmp_path)
    assert not any("reservoir" in name for name in inference.state_dict())


def test_reservoir_continues_from_a_loaded_state_as_if_never_stopped():
    data = [torch.randn(16, D_MODEL) for _ in range(30)]
    whole = make_training_sae(total_training_steps=1000, k_scale_reservoir=64)
    for step, x in enumerate(data):
        whole.training_forward_pass(train_step_input(x, step=step))
    first = make_training_sae(total_training_steps=1000, k_scale_reservoir=64)
    for step, x in enumerate(data[:12]):
        first.training_forward_pass(train_step_input(x, step=step))
    resumed = make_training_sae(total_training_steps=1000, k_scale_reservoir=64, seed=1)
    resumed.load_state_dict(first.state_dict())
    for step, x in enumerate(data[12:], start=12):
        resumed.training_forward_pass(train_step_input(x, step=step))
    assert torch.equal(_kept(resumed, 29, 16), _kept(whole, 29, 16))
    # a checkpoint from before the reservoir existed resumes with an empty one: only the rows
    # after the resume count
    old_state = {k: v for k, v in first.state_dict().items() if "reservoir" not in k}
    fresh = make_training_sae(total_training_steps=1000, k_scale_reservoir=64)
    fresh.process_state_dict_for_loading(old_state)
    fresh.load_state_dict(old_state)
    assert _kept(fresh, 11, 16).shape[0] == 0
    fresh.training_forward_pass(train_step_input(data[12], step=12))
    kept = _kept(fresh, 12, 16)
    assert 0 < kept.shape[0] <= 16 and all((row == data[12]).all(-1).any() for row in kept)
    # and a config without it drops a checkpoint's reservoir instead of failing to load
    off = make_training_sae(total_training_steps=1000, k_scale_reservoir=0)
    state = first.state_dict()
    off.process_state_dict_for_loading(state)
    off.load_state_dict(state)
    assert "k_scale_reservoir_rows" not in off.state_dict()


def test_last_step_reads_the_inference_factor_from_the_kept_rows():
    sae = make_training_sae(total_training_steps=20, k_scale_reservoir=512)
    data = [torch.randn(32, D_MODEL) * (1 + step / 4) for step in range(20)]
    for step, x in enumerate(data[:-1]):
        sae.training_forward_pass(train_step_input(x, step=step))
    before = sae.k_scale.item()
    out = sae.training_forward_pass(train_step_input(data[-1], step=19))
    # 512 of the run's 640 rows, read with the weights of the last step
    kept = _kept(sae, 19, 32)
    assert kept.shape[0] == 512
    level = _raw_level(sae, kept)
    assert sae.k_scale.item() == pytest.approx(sae.cfg.k / level.item(), rel=1e-5)
    assert sae.k_scale.item() != pytest.approx(before, rel=1e-3)
    assert out.metrics["softsae/k_scale_running"].item() == pytest.approx(sae.k_scale.item())
    # without the reservoir the last step only moves the running average
    plain = make_training_sae(total_training_steps=20, k_scale_reservoir=0)
    for step, x in enumerate(data):
        plain.training_forward_pass(train_step_input(x, step=step))
    assert not plain.uses_reservoir and "k_scale_reservoir_rows" not in plain.state_dict()
    assert plain.k_scale.item() != pytest.approx(sae.k_scale.item(), rel=1e-3)


def test_calibrate_k_scale_puts_the_mean_k_on_target_for_the_given_inputs(tmp_path):
    sae = make_training_sae()
    x = torch.randn(3, 50, D_MODEL) * 2
    scale = sae.calibrate_k_scale(x, chunk_rows=7)
    assert scale.item() == pytest.approx(sae.cfg.k / _raw_level(sae, x.reshape(-1, D_MODEL)).item())
    with torch.no_grad():
        k_raw = sae._predict_raw_k_from_sae_in(sae.process_sae_in(x))
    assert (k_raw * sae.k_scale).mean().item() == pytest.approx(sae.cfg.k, rel=1e-5)
    with pytest.raises(ValueError, match=r"inputs: shape \(4, 3\); needs at least one row of d_in"):
        sae.calibrate_k_scale(torch.randn(4, 3))
    bad = x.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs: 1 of 150 rows hold NaN or inf"):
        sae.calibrate_k_scale(bad)
    # the inference class has it too, with the same result
    sae.k_scale.fill_(1.0)
    inference = inference_copy(sae, tmp_path)
    torch.testing.assert_close(inference.calibrate_k_scale(x), sae.calibrate_k_scale(x))
