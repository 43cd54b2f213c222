"""The sweep's training from activations cached on disk (``--activation-cache DIR``).

The default sweep feeds every SAE from one activation stream (SAELens's
``MultiSAETrainingRunner``). With a cache, the model runs once over the tokens that stream would
read (the training split's first rows, special tokens left out, as SAELens's
``exclude_special_tokens=True`` does), the activations go to a ``.npy`` keyed by what produced
them (:mod:`softsae_lens.data.lm_activations`), and each SAE trains from that file through the
package's arrays trainer (:func:`~softsae_lens.training.on_arrays.train_on_activations`, SAELens's
``SAETrainer``) with the runner's settings: learning rate, warm-up, batch, steps, seed,
normalisation estimate. Sweeps over disjoint architectures can then share the cores: each
process trains its own SAEs, and only the first computes the file.

What differs from the stream: rows are shuffled over the whole cache (the stream mixes a
buffer of a few batches), and the held-out rows scored during training are the corpus's
held-out split rather than none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from softsae_lens.data.corpus import TokenCorpus
from softsae_lens.data.lm_activations import cache_lm_activations
from softsae_lens.experiments.sweep.config import SweepConfig

__all__ = ["HELDOUT_ROWS", "cache_sweep_activations", "train_from_cache"]

# held-out activations scored by the trainer's evaluator while training (16 batches of 1,024)
HELDOUT_ROWS = 16_384


def _token_rows(split: Any) -> torch.Tensor:
    # whatever format an earlier reader set on the split (the evals set torch's)
    return torch.from_numpy(np.asarray(split.with_format("numpy")["tokens"], dtype=np.int64))


def cache_sweep_activations(
    cfg: SweepConfig, model: Any, hook_name: str, model_name: str, text: TokenCorpus
) -> tuple[Path, Path]:
    """The training activations (exactly ``cfg.steps * cfg.batch_tokens`` rows: one pass) and
    up to :data:`HELDOUT_ROWS` held-out ones, cached under ``cfg.activation_cache``."""
    if not isinstance(text, TokenCorpus):
        raise ValueError("--activation-cache needs the local corpus (pre-tokenised rows)")
    from sae_lens.util import get_special_token_ids

    assert cfg.activation_cache is not None
    exclude = list(get_special_token_ids(model.tokenizer))
    train, heldout = _token_rows(text.train), _token_rows(text.heldout)
    n_train = cfg.steps * cfg.batch_tokens
    kept_heldout = int((~torch.isin(heldout, torch.tensor(exclude))).sum())
    common = {
        "folder": cfg.activation_cache,
        "model_name": model_name,
        "exclude_token_ids": exclude,
    }
    print(f"[{cfg.label}] activation cache: {n_train:,} training tokens", flush=True)
    train_path = cache_lm_activations(model, hook_name, train, n_rows=n_train, **common)
    heldout_path = cache_lm_activations(
        model, hook_name, heldout, n_rows=min(HELDOUT_ROWS, kept_heldout), progress=False, **common
    )
    print(f"[{cfg.label}] activation cache: {train_path}", flush=True)
    return train_path, heldout_path


def train_from_cache(
    cfg: SweepConfig,
    saes: dict[str, Any],
    runner_cfg: Any,
    model: Any,
    hook_name: str,
    model_name: str,
    text: TokenCorpus,
) -> dict[str, Any]:
    """Train every SAE of ``saes`` (built and calibrated by the sweep) from the cache, with the
    learning rate, warm-up, precision, normalisation estimate and seed of ``runner_cfg`` (the
    stream's ``MultiSAETrainingRunnerConfig``); each is saved to ``cfg.out / "saes" / name`` as
    the stream's runner saves it. Returns each SAE's held-out metrics on the cached held-out rows."""
    from softsae_lens.training.on_arrays import ActivationsRunnerConfig, train_on_activations

    train_path, heldout_path = cache_sweep_activations(cfg, model, hook_name, model_name, text)
    samples = runner_cfg.total_training_steps * runner_cfg.train_batch_size_tokens
    metrics = {}
    for name, sae in saes.items():
        print(f"[{cfg.label}] training {name} from the activation cache", flush=True)
        run = train_on_activations(
            ActivationsRunnerConfig(
                sae=sae.cfg,
                activations=str(train_path),
                eval_activations=str(heldout_path),
                training_samples=samples,
                train_batch_size=runner_cfg.train_batch_size_tokens,
                lr=runner_cfg.lr,
                lr_warm_up_steps=runner_cfg.lr_warm_up_steps,
                autocast=runner_cfg.autocast,
                n_batches_for_norm_estimate=runner_cfg.n_batches_for_norm_estimate,
                output_path=str(cfg.out / "saes" / name),
                overwrite=True,
                seed=runner_cfg.seed,
                model_name=model_name,
                hook_name=hook_name,
            ),
            sae=sae,
        )
        metrics[name] = run.metrics
    return metrics
