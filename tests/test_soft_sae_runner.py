"""SoftSAE inside TransformerLens and SAELens: HookedSAETransformer, the training runner, run_evals and the CLI."""

import subprocess
import sys

import pytest
import torch
from helpers import (
    CONTEXT,
    D_MODEL,
    HOOK,
    inference_copy,
    make_training_sae,
    tiny_runner_cfg,
    token_dataset,
    train_step_input,
)
from sae_lens import (
    SAE,
    LanguageModelSAETrainingRunner,
)

from softsae_lens import (
    SoftSAE,
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
    configure_runner,
)

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
            d_in=D_MODEL,
            d_sae=128,
            k=8,
            alpha_anneal_fraction=0.0,
            k_anneal_fraction=0.0,
            alpha_end=0.01,  # a floor whose left-out weights round away: the candidate path
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
