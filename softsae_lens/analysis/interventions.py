"""Interventions on a SoftSAE's per-token k: override it, and measure what that does to the loss.

Holds :func:`k_override_fn` (the validated override), :func:`with_k_override` (a context manager
that replaces ``k_hat`` on the SAE's ``hook_sae_k``), :class:`KOverrideLoss` and
:func:`loss_with_k_override` (the model's loss clean, spliced, and overridden).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from softsae_lens.analysis.splice import (
    ExcludeSpecial,
    bypassed_positions,
    check_soft,
    per_token_loss,
    sae_hook_name,
    special_token_ids,
    special_token_mask,
    spliced_sae,
    supports_special_token_exclusion,
    to_token_batches,
)

logger = logging.getLogger(__name__)

__all__ = ["KOverrideLoss", "k_override_fn", "loss_with_k_override", "with_k_override"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def k_override_fn(
    sae: Any, *, k: float | None = None, scale: float | None = None, cap: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function :func:`with_k_override` applies to ``k_hat`` (validates its arguments).

    Exactly one of:
        k: every token gets this k (a number in ``[1, floor(k_max)]``: the SoftSAE clamps the
            rounded k to that range, so a larger k could not take effect).
        scale: ``k_hat * scale`` (positive; results are still rounded and clamped to
            ``[1, floor(k_max)]``).
        cap: ``min(k_hat, cap)`` (at least 1).

    Raises:
        ValueError: naming the argument and value, when not exactly one is given or a value is
            out of range.
    """
    given = {name: value for name, value in (("k", k), ("scale", scale), ("cap", cap))}
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise ValueError(
            "exactly one of k, scale or cap must be given, got "
            + ", ".join(f"{name}={value!r}" for name, value in given.items())
        )
    k_ceiling = math.floor(float(sae.cfg.k_max))
    if k is not None:
        if not _is_number(k) or not 1 <= k <= k_ceiling:
            raise ValueError(
                f"k must be a number in [1, {k_ceiling}] (the SoftSAE clamps the rounded k to "
                f"[1, floor(k_max)]), got k={k!r}"
            )
        value = float(k)
        return lambda k_hat: torch.full_like(k_hat, value)
    if scale is not None:
        if not _is_number(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got scale={scale!r}")
        factor = float(scale)
        return lambda k_hat: k_hat * factor
    if not _is_number(cap) or cap < 1:
        raise ValueError(f"cap must be a finite number >= 1, got cap={cap!r}")
    ceiling = float(cap)
    return lambda k_hat: k_hat.clamp(max=ceiling)


@contextmanager
def _k_hook(sae: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """``fn`` applied to ``k_hat`` on ``sae.hook_sae_k`` inside the block, removed on exit."""

    def hook(k_hat: torch.Tensor, hook: Any) -> torch.Tensor:
        return fn(k_hat)

    hook_point = sae.hook_sae_k
    # Permanent, so that run_with_hooks / run_with_cache clean-ups inside the block leave it.
    hook_point.add_hook(hook, dir="fwd", is_permanent=True)
    handle = hook_point.fwd_hooks[-1]
    try:
        yield
    finally:
        handle.hook.remove()
        hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not handle]


@contextmanager
def with_k_override(
    model: Any | None,
    sae: Any,
    *,
    k: float | None = None,
    scale: float | None = None,
    cap: float | None = None,
    splice: bool = True,
    use_error_term: bool = False,
    exclude_special_tokens: ExcludeSpecial = True,
) -> Iterator[Any]:
    """Override the SoftSAE's per-token ``k_hat`` inside the block.

    A forward hook on ``sae.hook_sae_k`` (the HookPoint the model exposes as
    ``sae_hook_name(model, sae, "hook_sae_k")``) replaces the prediction before it is rounded,
    so it changes how many latents fire; see :func:`k_override_fn` for ``k``, ``scale`` and
    ``cap`` (exactly one). The hook is marked permanent so that the model's own
    ``run_with_hooks`` / ``run_with_cache`` clean-ups inside the block leave it alone, and only
    this hook is removed on exit.

    Args:
        model: the ``HookedSAETransformer`` or ``SAETransformerBridge``; ``None`` with
            ``splice=False`` overrides only the standalone SAE (``sae(x)``, ``sae.encode(x)``).
        splice: also splice ``sae`` into ``model`` for the block (restored on exit); pass
            ``False`` when it is already attached or you attach it yourself.
        use_error_term: passed to the splice.
        exclude_special_tokens: passed to the splice (see
            :func:`~softsae_lens.analysis.spliced_sae`): by default the SAE leaves BOS, EOS, PAD
            and SEP positions alone in the forwards you run in the block. A plain
            ``SAETransformerBridge`` cannot do that (a warning says so): boot
            :class:`softsae_lens.models.bridge.SAEBridge` instead (what
            :func:`softsae_lens.models.local.load_bridge` returns).

    Yields:
        ``model`` (or ``sae`` when ``model`` is None).

    Example::

        with with_k_override(model, sae, k=1):
            loss = model(tokens, return_type="loss")
    """
    check_soft(sae)
    fn = k_override_fn(sae, k=k, scale=scale, cap=cap)
    if splice and model is None:
        raise ValueError("splice=True needs a model; pass splice=False to override the bare SAE")
    if (
        splice
        and not supports_special_token_exclusion(model)
        and special_token_ids(model, exclude_special_tokens)
    ):
        logger.warning(
            "%s.saes() has no exclude_special_tokens: forwards run inside with_k_override splice "
            "the SAE at special tokens too (token_k_report and loss_with_k_override do not); "
            "use softsae_lens.models.bridge.SAEBridge (softsae_lens.models.local.load_bridge) instead",
            type(model).__name__,
        )
    with ExitStack() as stack:
        if splice:
            stack.enter_context(
                spliced_sae(
                    model,
                    sae,
                    use_error_term=use_error_term,
                    exclude_special_tokens=exclude_special_tokens,
                )
            )
        stack.enter_context(_k_hook(sae, fn))
        yield model if model is not None else sae


@dataclass
class KOverrideLoss:
    """Losses from :func:`loss_with_k_override`.

    The ``*_per_token`` tensors hold the per-token cross-entropies of all inputs, each input's
    ``[batch, pos - 1]`` flattened row-major and concatenated in input order, and
    ``counted_per_token`` says which of them the means count: all but those predicted from an
    excluded special token (as ``sae_lens.evals.run_evals`` counts). L0 and ``k_hat`` means are
    over every position that does not hold an excluded special token.
    """

    clean: float
    spliced: float
    override: float
    clean_per_token: torch.Tensor
    spliced_per_token: torch.Tensor
    override_per_token: torch.Tensor
    counted_per_token: torch.Tensor
    k_hat_mean: float
    l0_spliced_mean: float
    l0_override_mean: float
    override_args: dict[str, float]
    n_excluded: int = 0

    @property
    def delta_vs_spliced(self) -> float:
        """Loss change caused by the override, relative to the SAE with its own k."""
        return self.override - self.spliced

    @property
    def delta_vs_clean(self) -> float:
        return self.override - self.clean

    def summary(self) -> dict[str, Any]:
        """JSON-ready means (no per-token tensors)."""
        return {
            "override": self.override_args,
            "loss_clean": self.clean,
            "loss_spliced": self.spliced,
            "loss_override": self.override,
            "delta_vs_spliced": self.delta_vs_spliced,
            "delta_vs_clean": self.delta_vs_clean,
            "k_hat_mean": self.k_hat_mean,
            "l0_spliced_mean": self.l0_spliced_mean,
            "l0_override_mean": self.l0_override_mean,
            "n_special_tokens_excluded": self.n_excluded,
        }


@torch.no_grad()
def loss_with_k_override(
    model: Any,
    sae: Any,
    tokens: str | torch.Tensor | Sequence[str] | Sequence[torch.Tensor],
    *,
    k: float | None = None,
    scale: float | None = None,
    cap: float | None = None,
    max_tokens: int | None = None,
    exclude_special_tokens: ExcludeSpecial = True,
) -> KOverrideLoss:
    """The model's loss clean, with ``sae`` spliced in (no error term), and with ``k`` overridden.

    ``tokens`` takes anything :func:`~softsae_lens.analysis.to_token_batches` does;
    ``k``/``scale``/``cap`` as in :func:`with_k_override` (exactly one). Special tokens are
    left alone and out of the means by default, as in ``sae_lens.evals.run_evals``
    (``exclude_special_tokens``: True, False or token ids; see
    :func:`~softsae_lens.analysis.token_k_report`). The model is restored afterwards.
    """
    check_soft(sae)
    fn = k_override_fn(sae, k=k, scale=scale, cap=cap)  # validate before any forward pass
    args = {n: float(v) for n, v in (("k", k), ("scale", scale), ("cap", cap)) if v is not None}
    ids = special_token_ids(model, exclude_special_tokens)
    k_name = sae_hook_name(model, sae, "hook_sae_k")
    acts_name = sae_hook_name(model, sae, "hook_sae_acts_post")
    clean, spliced, override, counted = [], [], [], []
    n_excluded = 0
    k_hats, l0_spliced, l0_override = [], [], []

    def run(tokens_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with bypassed_positions(model, sae, tokens_b, ids):
            loss, cache = model.run_with_cache(
                tokens_b, names_filter=[k_name, acts_name], return_type="loss", loss_per_token=True
            )
        return loss.float().flatten(), cache[k_name].float(), (cache[acts_name] != 0).sum(-1)

    for tokens_b in to_token_batches(model, tokens, max_tokens):
        if tokens_b.shape[-1] < 2:
            raise ValueError("every input needs at least 2 tokens to have a loss")
        kept = ~special_token_mask(tokens_b, ids)
        n_excluded += int((~kept).sum())
        counted.append(kept[:, :-1].flatten().cpu())
        clean.append(per_token_loss(model, tokens_b).flatten())
        with spliced_sae(model, sae, exclude_special_tokens=ids):
            loss, k_hat, l0 = run(tokens_b)
            spliced.append(loss)
            k_hats.append(k_hat[kept].flatten())
            l0_spliced.append(l0[kept].flatten().float())
            with _k_hook(sae, fn):
                loss, _, l0 = run(tokens_b)
            override.append(loss)
            l0_override.append(l0[kept].flatten().float())

    cat = torch.cat
    mask = cat(counted)
    clean_all, spliced_all, override_all = cat(clean).cpu(), cat(spliced).cpu(), cat(override).cpu()
    return KOverrideLoss(
        clean=float(clean_all[mask].mean()),
        spliced=float(spliced_all[mask].mean()),
        override=float(override_all[mask].mean()),
        clean_per_token=clean_all,
        spliced_per_token=spliced_all,
        override_per_token=override_all,
        counted_per_token=mask,
        k_hat_mean=float(cat(k_hats).mean()),
        l0_spliced_mean=float(cat(l0_spliced).mean()),
        l0_override_mean=float(cat(l0_override).mean()),
        override_args=args,
        n_excluded=n_excluded,
    )
