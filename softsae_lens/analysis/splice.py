"""Splicing a SoftSAE into a TransformerLens model, and turning texts into token batches.

Holds: :func:`sae_hook_name` (where the SAE's hooks live once attached), :func:`spliced_sae` (attach
for a block, restore the model fully after, leave special tokens alone), :func:`bypassed_positions`
(the same exclusion for one forward on any model), :func:`to_token_batches` and the per-token loss
of a model.

Works the same on SAELens's ``HookedSAETransformer`` and ``SAETransformerBridge`` (and
:class:`softsae_lens.models.bridge.SAEBridge`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from softsae_lens.models.bridge import (
    ExcludeSpecial,
    restored_hook_points,
    special_token_ids,
    special_token_mask,
)

__all__ = [
    "ExcludeSpecial",
    "bypassed_positions",
    "check_soft",
    "per_token_loss",
    "sae_hook_name",
    "special_token_ids",
    "special_token_mask",
    "spliced_sae",
    "supports_special_token_exclusion",
    "to_token_batches",
]


def sae_hook_name(model: Any, sae: Any, internal: str = "hook_sae_k") -> str:
    """Full name of one of ``sae``'s hooks as ``model.hook_dict`` and caches spell it.

    ``SAETransformerBridge`` resolves alias hook names when it attaches an SAE, so an SAE with
    ``hook_name="blocks.5.hook_resid_post"`` has its hooks under ``blocks.5.hook_out.*``; the
    bridge's ``get_sae_hook_name`` knows that. ``HookedSAETransformer`` keeps the SAE's own
    hook name.
    """
    resolve = getattr(model, "get_sae_hook_name", None)
    if callable(resolve):
        return resolve(sae, internal)
    meta = sae.cfg.metadata
    return f"{meta.hook_name_out or meta.hook_name}.{internal}"


def _check_model(model: Any) -> None:
    if not callable(getattr(model, "saes", None)):
        raise TypeError(
            f"{type(model).__name__} cannot splice SAEs in: use sae_lens.HookedSAETransformer or "
            "sae_lens.SAETransformerBridge (both have the saes() context manager)"
        )


def check_soft(sae: Any) -> None:
    """Raise a TypeError unless ``sae`` is a SoftSAE (has ``hook_sae_k`` and ``round_k``)."""
    if not hasattr(sae, "hook_sae_k") or not callable(getattr(sae, "round_k", None)):
        raise TypeError(
            f"expected a SoftSAE (architecture 'soft', with hook_sae_k), got {type(sae).__name__}"
        )


def supports_special_token_exclusion(model: Any) -> bool:
    """Whether ``model.saes(...)`` takes ``exclude_special_tokens`` (``HookedSAETransformer``,
    :class:`~softsae_lens.models.bridge.SAEBridge`; not a plain ``SAETransformerBridge``)."""
    saes = getattr(model, "saes", None)
    try:
        return callable(saes) and "exclude_special_tokens" in inspect.signature(saes).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def spliced_sae(
    model: Any,
    sae: Any,
    use_error_term: bool = False,
    *,
    exclude_special_tokens: ExcludeSpecial = True,
) -> Iterator[Any]:
    """Splice ``sae`` into ``model`` for the duration of the block; restore the model after.

    Unlike SAELens's own ``add_sae``, which logs a warning and does nothing when the SAE's hook
    name does not exist on the model, this raises a ValueError naming the hook. On a
    ``SAETransformerBridge`` the original HookPoint objects are put back on exit (SAELens leaves a
    renamed one that silently ignores ``run_with_hooks``; see :mod:`softsae_lens.models.bridge`).

    Args:
        exclude_special_tokens: positions holding these tokens keep the model's own activation,
            as in ``sae_lens.evals.run_evals``: True (default) for the tokenizer's BOS, EOS,
            PAD, SEP and decoder-start ids, False for none, or a list of ids. The models whose
            ``saes()`` take the option apply it to every forward in the block; on a plain
            ``SAETransformerBridge`` only forwards wrapped in :func:`bypassed_positions` (as
            every function of this package does) leave them alone.
    """
    _check_model(model)
    ids = special_token_ids(model, exclude_special_tokens)
    kwargs = (
        {"exclude_special_tokens": ids or False} if supports_special_token_exclusion(model) else {}
    )
    with (
        restored_hook_points(model),
        model.saes(saes=[sae], use_error_term=use_error_term, **kwargs),
    ):
        name = sae_hook_name(model, sae, "hook_sae_k")
        if name not in model.hook_dict:
            raise ValueError(
                f"the SAE was not attached: its hook name {sae.cfg.metadata.hook_name!r} is not a "
                f"hook of {type(model).__name__} (expected {name!r} in model.hook_dict)"
            )
        yield model


@contextmanager
def bypassed_positions(
    model: Any, sae: Any, tokens: torch.Tensor, ids: Sequence[int]
) -> Iterator[torch.Tensor]:
    """Inside a splice, bypass the SAE where ``tokens`` is one of ``ids`` for the next forward.

    Sets the token mask of the SAE's wrapper (SAELens's own mechanism, which puts the model's
    activation back and a zero error term at those positions) for forwards on exactly
    ``tokens``; works on every model SAELens splices into. Yields the ``tokens.shape`` mask.
    """
    mask = special_token_mask(tokens, ids)
    # Both SAELens models keep their wrappers here; neither exposes them publicly.
    wrapper = getattr(model, "_acts_to_saes", {}).get(sae.cfg.metadata.hook_name)
    with ExitStack() as stack:
        if wrapper is not None and ids:
            wrapper.set_token_mask(mask)
            stack.callback(wrapper.set_token_mask, None)
        yield mask


def has_tokenizer(model: Any) -> bool:
    """Whether ``model`` carries a tokenizer (texts can be given as strings)."""
    return getattr(model, "tokenizer", None) is not None


def _n_ctx(model: Any) -> int | None:
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


def to_token_batches(
    model: Any,
    texts: str | torch.Tensor | Sequence[str] | Sequence[torch.Tensor],
    max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Turn texts or tokens into a list of ``[batch, pos]`` LongTensors, one per input.

    Args:
        texts: a string, a list of strings (each tokenized alone with ``model.to_tokens``, so
            with the model's default BOS), a 1-D or 2-D integer tensor of token ids, or a list
            of such tensors. A 2-D tensor stays one batch whose rows are separate texts.
        max_tokens: keep at most this many tokens per text (default: the model's ``n_ctx``).
    """
    limit = max_tokens if max_tokens is not None else _n_ctx(model)
    items: list[Any] = [texts] if isinstance(texts, (str, torch.Tensor)) else list(texts)
    if not items:
        raise ValueError("no texts given")
    device = getattr(getattr(model, "cfg", None), "device", None)
    batches = []
    for item in items:
        if isinstance(item, str):
            if not has_tokenizer(model):
                raise TypeError(
                    f"{type(model).__name__} has no tokenizer: pass token ids (a LongTensor) "
                    "instead of strings"
                )
            tokens = model.to_tokens(item)
        elif isinstance(item, torch.Tensor):
            if item.is_floating_point() or item.is_complex() or item.dtype == torch.bool:
                raise TypeError(f"token tensors must hold integer ids, got dtype {item.dtype}")
            if item.dim() not in (1, 2):
                raise ValueError(
                    f"token tensors must be [pos] or [batch, pos], got shape {tuple(item.shape)}"
                )
            tokens = item.long().reshape(-1, item.shape[-1])
        else:
            raise TypeError(f"texts must be strings or token tensors, got {type(item).__name__}")
        if tokens.shape[-1] == 0:
            raise ValueError("a text has no tokens")
        if limit is not None:
            tokens = tokens[:, :limit]
        if device is not None:
            tokens = tokens.to(device)
        batches.append(tokens)
    return batches


def per_token_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos - 1]`` cross-entropy of each next token under ``model``, as float32."""
    if tokens.shape[-1] < 2:
        return torch.zeros(tokens.shape[0], 0)
    return model(tokens, return_type="loss", loss_per_token=True).detach().float()
