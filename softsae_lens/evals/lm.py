"""Held-out evaluation of SAEs spliced into a language model, priced before it is paid."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "HEADLINE_KEYS",
    "EvalBudget",
    "describe_eval_cost",
    "eval_cost",
    "evaluate_sae",
    "headline_metrics",
    "heldout_store",
    "measure_forward_seconds",
]

HEADLINE_KEYS = (
    "explained_variance",
    "mse",
    "ce_loss_score",
    "kl_div_score",
    "l0",
    "dead_latents",
    "ce_loss_with_sae",
    "ce_loss_without_sae",
)


@dataclass(frozen=True)
class EvalBudget:
    """How much held-out text ``run_evals`` reads per SAE.

    Attributes:
        ce_batches: batches for the CE-loss and KL-div scores (three full forwards each).
        variance_batches: batches for explained variance, MSE, L0 and dead latents (one
            forward up to the hook's layer each, so cheap). An adaptive SAE's mean L0 depends
            on which documents it sees: on 48 rows it moves by several percent, which hides
            whether the L0 is on target.
        batch_prompts: rows of ``context_size`` tokens per batch.
        context_size: tokens per row.
        k_report_docs: held-out documents for SoftSAE's per-token k_hat statistics.
        k_report_tokens: at most this many tokens of each of those documents.
    """

    ce_batches: int = 6
    variance_batches: int = 32
    batch_prompts: int = 8
    context_size: int = 128
    k_report_docs: int = 24
    k_report_tokens: int = 128

    def __post_init__(self) -> None:
        for name in ("ce_batches", "variance_batches", "batch_prompts", "context_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("k_report_docs", "k_report_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def ce_tokens(self) -> int:
        return self.ce_batches * self.batch_prompts * self.context_size

    @property
    def variance_tokens(self) -> int:
        return self.variance_batches * self.batch_prompts * self.context_size

    @property
    def heldout_rows_needed(self) -> int:
        """Rows each evaluation reads: the CE/KL rows, then the variance rows after them
        (``run_evals`` calls ``reset_input_dataset`` between the two, which does not rewind)."""
        return (self.ce_batches + self.variance_batches) * self.batch_prompts


def _stop_at_layer(hook_name: str) -> int | None:
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    return extract_stop_at_layer_from_tlens_hook_name(hook_name)


@torch.no_grad()
def measure_forward_seconds(
    model: Any, tokens: torch.Tensor, hook_name: str, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Seconds of one full forward (with per-token loss) and one forward up to ``hook_name``'s
    layer on ``tokens`` ``[batch, ctx]``, after a warm-up pass.

    Args:
        clock: ``time.perf_counter`` for wall time (default) or ``time.process_time`` for CPU
            time, which other processes on a shared machine disturb much less.
    """
    stop = _stop_at_layer(hook_name)
    # Warm both paths up first: the first call of each pays one-off costs (lazy set-up,
    # allocator growth) that would inflate the estimate several-fold.
    model.run_with_cache(tokens[:1, :8], names_filter=[hook_name], stop_at_layer=stop)
    model(tokens[:1, :8], return_type="both", loss_per_token=True)
    start = clock()
    model.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=stop)
    partial = clock() - start
    start = clock()
    model(tokens, return_type="both", loss_per_token=True)
    full = clock() - start
    return {"full": full, "partial": partial, "tokens": float(tokens.numel())}


def eval_cost(
    budget: EvalBudget,
    n_saes: int,
    n_soft: int,
    forward: dict[str, float] | None,
    l0_report: bool = False,
) -> dict[str, Any]:
    """Tokens, model forwards and (given a measured forward) seconds the evaluation will take.

    Args:
        budget: what each SAE is evaluated on.
        n_saes: SAEs evaluated with ``run_evals``.
        n_soft: of those, SoftSAEs that also get the per-token k_hat report (two full forwards
            of each report document: clean, and with the SAE spliced in).
        forward: :func:`measure_forward_seconds`'s result, or None for no time estimate.
        l0_report: every SAE also gets the per-token L0 report
            (:func:`token_l0_statistics`: one clean full forward of each report document,
            shared by all the SAEs).
    """
    full_tokens = n_saes * 3 * budget.ce_tokens
    partial_tokens = n_saes * budget.variance_tokens
    passes = n_soft * 2 + (1 if l0_report and n_saes > 0 else 0)
    report_tokens = passes * budget.k_report_docs * budget.k_report_tokens
    out: dict[str, Any] = {
        "saes": n_saes,
        "ce_tokens_per_sae": budget.ce_tokens,
        "variance_tokens_per_sae": budget.variance_tokens,
        "full_forward_tokens": full_tokens + report_tokens,
        "partial_forward_tokens": partial_tokens,
        "seconds": None,
    }
    if forward is not None:
        per_full = forward["full"] / forward["tokens"]
        per_partial = forward["partial"] / forward["tokens"]
        out["seconds_per_1k_tokens"] = {"full": 1000 * per_full, "partial": 1000 * per_partial}
        out["run_evals_seconds"] = full_tokens * per_full + partial_tokens * per_partial
        out["k_report_seconds"] = report_tokens * per_full
        out["seconds"] = out["run_evals_seconds"] + out["k_report_seconds"]
    return out


def describe_eval_cost(cost: dict[str, Any], budget: EvalBudget, layer_hook: str) -> str:
    """Human-readable version of :func:`eval_cost`."""
    text = (
        f"{cost['saes']} SAE(s) x run_evals on held-out rows: CE/KL on {budget.ce_batches} x "
        f"{budget.batch_prompts} x {budget.context_size} = {budget.ce_tokens:,} tokens (3 full "
        f"forwards each: clean, SAE spliced in, zero-ablated), variance/L0 on "
        f"{budget.variance_tokens:,} tokens (forward to {layer_hook} only)"
    )
    if cost["seconds"] is None:
        return text
    rate = cost["seconds_per_1k_tokens"]
    return (
        f"{text}; measured {rate['full']:.2f} s per 1k tokens for a full forward, "
        f"{rate['partial']:.2f} s to the hook -> about {cost['run_evals_seconds']:.0f} s for "
        f"run_evals and {cost['k_report_seconds']:.0f} s for SoftSAE's per-token report"
    )


def heldout_store(
    model: Any, heldout: Any, hook_name: str, d_in: int, budget: EvalBudget, device: str = "cpu"
) -> Any:
    """An ``ActivationsStore`` over held-out rows (a ``"tokens"`` or ``"text"`` dataset)."""
    from sae_lens.training.activations_store import ActivationsStore

    if "tokens" in heldout.column_names and heldout.num_rows < budget.heldout_rows_needed:
        raise ValueError(
            f"the evaluation reads {budget.heldout_rows_needed} held-out rows per SAE but only "
            f"{heldout.num_rows} exist; lower the eval batches or batch prompts"
        )
    return ActivationsStore(
        model=model,
        dataset=heldout,
        streaming=False,
        hook_name=hook_name,
        hook_head_index=None,
        context_size=budget.context_size,
        d_in=d_in,
        n_batches_in_buffer=2,
        total_training_tokens=budget.ce_tokens,
        store_batch_size_prompts=budget.batch_prompts,
        train_batch_size_tokens=budget.batch_prompts * budget.context_size,
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device(device),
        dtype="float32",
    )


def evaluate_sae(
    sae: Any, model: Any, heldout: Any, budget: EvalBudget, device: str = "cpu"
) -> dict[str, Any]:
    """``sae_lens.evals.run_evals`` on the first rows of ``heldout``, every metric group on,
    special tokens excluded. Returns run_evals's metrics plus a ``"feature_density"`` group
    (``dead_latents``: latents never active on the variance/sparsity tokens).

    Each call reads from a new store, so every SAE is scored on the same tokens:
    ``ActivationsStore.reset_input_dataset`` does not rewind a store (it resets an iterator
    that ``get_batch_tokens`` never reads), so one store shared by several SAEs would give
    each SAE later rows than the one before.
    """
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from softsae_lens.data.corpus import pretokenized_warnings_ignored

    store = heldout_store(model, heldout, sae.cfg.metadata.hook_name, sae.cfg.d_in, budget, device)
    eval_cfg = EvalConfig(
        batch_size_prompts=budget.batch_prompts,
        n_eval_reconstruction_batches=budget.ce_batches,
        n_eval_sparsity_variance_batches=budget.variance_batches,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    with pretokenized_warnings_ignored():
        metrics, features = run_evals(
            sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=True
        )
    density = torch.tensor(features["feature_density"])
    metrics["feature_density"] = {
        "dead_latents": int((density == 0).sum()),
        "d_sae": int(density.numel()),
        "tokens": budget.variance_tokens,
    }
    return metrics


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Flatten :func:`evaluate_sae`'s nested result to :data:`HEADLINE_KEYS`."""
    groups = (
        "reconstruction_quality",
        "model_performance_preservation",
        "model_behavior_preservation",
        "sparsity",
        "feature_density",
    )
    flat: dict[str, Any] = {}
    for group in groups:
        flat.update(metrics.get(group, {}))
    return {key: flat.get(key) for key in HEADLINE_KEYS}
