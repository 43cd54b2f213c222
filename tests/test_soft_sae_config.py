"""SoftSAE's configs: defaults, round trips, validation; its registration with SAELens."""

import json
import re
import subprocess
import sys

import pytest
import torch
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

import softsae_lens
from softsae_lens import (
    SoftSAE,
    SoftSAEConfig,
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
)

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
        (dict(k_scale_reservoir=-1), r"k_scale_reservoir must be an integer >= 0 \(0: off\)"),
        (dict(k_scale_reservoir=8.5), r"k_scale_reservoir must be an integer >= 0"),
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


# Every float field SoftTrainingSAEConfig declares (inherited ones are SAELens's to check).
FLOAT_FIELDS = sorted(
    name
    for name, annotation in vars(SoftTrainingSAEConfig)["__annotations__"].items()
    if str(annotation) in ("float", "float | None")
)
assert len(FLOAT_FIELDS) == 12, FLOAT_FIELDS  # a field that stops being a float is noticed


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
