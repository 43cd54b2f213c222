"""Training both SAEs of the example on the embeddings: SoftSAE and TopK at the same ``k``, with
the same steps, batches, learning rate and seed, through
:func:`softsae_lens.training.on_arrays.train_on_activations` (SAELens's ``SAETrainer`` over the
memory-mapped ``.npy``), each scored per held-out sentence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from softsae_lens.experiments.minilm.config import Settings

__all__ = ["train_both"]


def train_both(settings: Settings, emb_path: Path, n_rows: int) -> dict[str, Any]:
    """SoftSAE and TopK at the same k, same data, steps, learning rate and seed."""
    from sae_lens import TopKTrainingSAEConfig

    from softsae_lens import SoftTrainingSAEConfig
    from softsae_lens.data.activations import open_activations
    from softsae_lens.data.batches import split_rows
    from softsae_lens.evals.heldout import evaluate_on_rows
    from softsae_lens.models.minilm import D_MODEL
    from softsae_lens.training.on_arrays import ActivationsRunnerConfig, train_on_activations

    n_train = n_rows - round(settings.eval_fraction * n_rows)
    steps = max(1, round(settings.passes * n_train / settings.batch_size))
    configs = {
        "soft": SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=settings.d_sae, k=settings.k),
        "topk": TopKTrainingSAEConfig(d_in=D_MODEL, d_sae=settings.d_sae, k=settings.k),
    }
    rows = open_activations(emb_path)
    _, held = split_rows(n_rows, settings.eval_fraction, None, settings.seed)
    out: dict[str, Any] = {"steps": steps, "held_out": held}
    for name, sae_cfg in configs.items():
        sae_cfg.normalize_activations = "expected_average_only_in"
        start = time.perf_counter()
        run = train_on_activations(
            ActivationsRunnerConfig(
                sae=sae_cfg,
                activations=str(emb_path),
                eval_fraction=settings.eval_fraction,
                max_eval_rows=None,
                train_batch_size=settings.batch_size,
                training_samples=steps * settings.batch_size,
                lr=settings.lr,
                output_path=str(settings.out / name),
                overwrite=True,  # a rerun regenerates its results
                seed=settings.seed,
                model_name="sentence-transformers/all-MiniLM-L6-v2",
                hook_name="mean_pooled_normalized",
            ),
            progress=settings.progress,
        )
        per_row = evaluate_on_rows(run.sae, rows, held, per_row=True)["rows"]
        out[name] = {
            "metrics": run.metrics,
            "rows": per_row,
            "seconds": time.perf_counter() - start,
        }
    return out
