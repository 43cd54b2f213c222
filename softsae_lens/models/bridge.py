"""SAELens's ``SAETransformerBridge``, left intact after an SAE splice, and special tokens.

Two gaps of ``sae_lens.SAETransformerBridge`` (SAELens 6.54, TransformerLens 3.9) that
``HookedSAETransformer`` does not have, closed by subclassing and by restoring objects, never by
patching SAELens:

1. **A splice breaks the hook it used.** ``add_sae`` puts an SAE wrapper where the HookPoint was
   (e.g. ``blocks.5.hook_out``); on reset, ``_reset_sae`` puts back a *new* ``HookPoint``. Its
   name is set to ``blocks.5.hook_out`` and then, because assigning a HookPoint to a bridge
   component registers it under the attribute's own name, overwritten with ``hook_out``. From then
   on ``hook_dict["blocks.5.hook_out"].name == "hook_out"``: ``run_with_hooks`` maps the name to
   ``hook_out`` as if it were an alias, finds no such hook and silently adds nothing, so a
   zero-ablation changes nothing and ``sae_lens.evals.run_evals`` divides by zero in its CE-loss
   score. The cure is to put the *original* HookPoint object back (its name, conversion rule and
   any hooks the user attached come with it): :func:`restored_hook_points` does that around any
   block, and :class:`SAEBridge` does it in its own reset.
2. **Special tokens.** ``HookedSAETransformer.saes(exclude_special_tokens=...)`` bypasses the SAE
   at BOS/EOS/PAD/SEP positions, as ``run_evals`` does by default; the bridge's ``saes`` has no
   such option, though its SAE wrapper supports a token mask. :class:`SAEBridge` adds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from sae_lens import SAETransformerBridge

# SAELens has no public name for the wrapper it splices in, nor for its attribute setter; the
# wrapper's class tells a spliced site from a HookPoint, and set_deep_attr is how SAELens itself
# swaps objects at a hook path.
from sae_lens.analysis.hooked_sae_transformer import _SAEWrapper, set_deep_attr
from sae_lens.util import get_special_token_ids
from transformer_lens.hook_points import HookPoint

__all__ = [
    "SAEBridge",
    "put_back_hook_point",
    "restored_hook_points",
    "special_token_ids",
    "special_token_mask",
]

# How analysis functions and SAEBridge.saes() take the option, as SAELens's run_evals does:
# True (the tokenizer's BOS/EOS/PAD/SEP/decoder-start ids), False (none) or a list of ids.
ExcludeSpecial = bool | Iterable[int]


def special_token_ids(model: Any, exclude_special_tokens: ExcludeSpecial = True) -> list[int]:
    """The token ids to leave alone, as ``sae_lens.evals.run_evals`` chooses them.

    ``True``: the structural special tokens of ``model.tokenizer`` (BOS, EOS, PAD, SEP,
    decoder-start; chat-template tokens stay in, as in SAELens), none when the model has no
    tokenizer. ``False``: none. An iterable of ints: exactly those.

    Raises:
        TypeError: naming the value, when it is neither a bool nor integer ids.
    """
    if exclude_special_tokens is True:
        tokenizer = getattr(model, "tokenizer", None)
        return sorted(get_special_token_ids(tokenizer)) if tokenizer is not None else []
    if exclude_special_tokens is False or exclude_special_tokens is None:
        return []
    ids = list(exclude_special_tokens)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(
            "exclude_special_tokens must be True, False or a list of token ids, "
            f"got {exclude_special_tokens!r}"
        )
    return ids


def special_token_mask(tokens: torch.Tensor, ids: Iterable[int]) -> torch.Tensor:
    """Boolean ``tokens.shape`` mask, True where the token is one of ``ids``."""
    ids = list(ids)
    if not ids:
        return torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    return torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype, device=tokens.device))


def put_back_hook_point(model: Any, name: str, hook_point: HookPoint) -> None:
    """Reinstall ``hook_point`` at ``name`` on a TransformerBridge, under its full name."""
    set_deep_attr(model, name, hook_point)
    # A bridge component renames a HookPoint assigned to it after the attribute ("hook_out");
    # run_with_hooks would then treat the full name as an alias of a hook that does not exist.
    hook_point.name = name
    # TransformerBridge keeps no public view of this registry: it is where hook_dict comes from.
    model._hook_registry[name] = hook_point


@contextmanager
def restored_hook_points(model: Any) -> Iterator[Any]:
    """On exit, put back every HookPoint object ``model``'s hook registry held on entry.

    A no-op for models without a TransformerBridge hook registry (``HookedSAETransformer``
    rebuilds its own hook names after a reset). Sites where an SAE is still attached on exit are
    left alone (an outer splice, or ``reset_saes_end=False``).
    """
    registry = getattr(model, "_hook_registry", None)
    if not isinstance(registry, dict):
        yield model
        return
    saved = {name: hp for name, hp in registry.items() if isinstance(hp, HookPoint)}
    try:
        yield model
    finally:
        for name, hook_point in saved.items():
            current = registry.get(name)
            if current is not hook_point and not isinstance(current, _SAEWrapper):
                put_back_hook_point(model, name, hook_point)


class SAEBridge(SAETransformerBridge):
    """``SAETransformerBridge`` whose hooks survive SAE splices, with special-token exclusion.

    Boot it like its parent (``SAEBridge.boot_transformers(name_or_folder, device=..., dtype=...)``)
    or with :func:`softsae_lens.models.local.load_bridge`. Differences from the parent:

    - after ``reset_saes`` / the end of ``saes(...)`` the site holds its original HookPoint again
      (see the module docstring for what the parent leaves behind);
    - ``add_sae`` and ``saes`` take ``exclude_special_tokens`` (True, False or token ids) as
      ``HookedSAETransformer``'s do: the SAE is bypassed at those positions in every forward.
    """

    def _originals(self) -> dict[str, HookPoint]:
        # boot_transformers swaps __class__ on a parent instance, so __init__ never runs here.
        return self.__dict__.setdefault("_softsae_original_hook_points", {})

    def _site(self, act_name: str) -> str:
        # The hook path the SAE occupies: its output hook for a transcoder, resolved from aliases.
        return self._transcoder_output_hooks.get(act_name, self._resolve_hook_name(act_name))

    def add_sae(
        self,
        sae: Any,
        use_error_term: bool | None = None,
        exclude_special_tokens: ExcludeSpecial | None = None,
    ) -> None:
        """``SAETransformerBridge.add_sae``, remembering the HookPoint it replaces.

        Args:
            exclude_special_tokens: bypass the SAE at these positions (see
                :func:`special_token_ids`); default: what the enclosing ``saes(...)`` asked for,
                else False.
        """
        if exclude_special_tokens is None:
            exclude_special_tokens = self.__dict__.get("_softsae_exclude_default", False)
        meta = sae.cfg.metadata
        site = self._resolve_hook_name(meta.hook_name_out or meta.hook_name)
        before = self._hook_registry.get(site)
        super().add_sae(sae, use_error_term=use_error_term)
        wrapper = self._acts_to_saes.get(meta.hook_name)
        if wrapper is None or wrapper.sae is not sae:
            return  # not attached: SAELens logged why
        if isinstance(before, HookPoint):
            self._originals().setdefault(site, before)
        # Ids resolved once, here: the wrapper holds a list of ids, or False for none.
        wrapper.exclude_special_tokens = special_token_ids(self, exclude_special_tokens) or False

    def _reset_sae(self, act_name: str, prev_wrapper: _SAEWrapper | None = None) -> None:
        if act_name not in self._acts_to_saes:
            super()._reset_sae(act_name, prev_wrapper)  # logs that nothing is attached
            return
        site = self._site(act_name)
        super()._reset_sae(act_name, None)
        original = self._originals().pop(site, None)
        if original is not None:
            put_back_hook_point(self, site, original)
        if prev_wrapper is not None:
            self.add_sae(
                prev_wrapper.sae,
                use_error_term=prev_wrapper.use_error_term,
                exclude_special_tokens=prev_wrapper.exclude_special_tokens,
            )

    @contextmanager
    def saes(
        self,
        saes: Any = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
        exclude_special_tokens: ExcludeSpecial = False,
    ) -> Iterator[SAEBridge]:
        """``SAETransformerBridge.saes`` plus ``exclude_special_tokens`` (see :meth:`add_sae`)."""
        previous = self.__dict__.get("_softsae_exclude_default", False)
        self.__dict__["_softsae_exclude_default"] = exclude_special_tokens
        try:
            with super().saes(
                saes=saes, reset_saes_end=reset_saes_end, use_error_term=use_error_term
            ):
                # The SAEs are attached: later add_sae calls in the block get their own default.
                self.__dict__["_softsae_exclude_default"] = previous
                yield self
        finally:
            self.__dict__["_softsae_exclude_default"] = previous

    def forward(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        """The bridge's forward, with special-token masks set on the SAEs that asked for them."""
        wrappers = [w for w in self._acts_to_saes.values() if w.exclude_special_tokens]
        if not wrappers:
            return super().forward(input, *args, **kwargs)
        tokens = input
        if not isinstance(input, torch.Tensor):
            tokens = self.to_tokens(
                input,
                prepend_bos=kwargs.get("prepend_bos"),
                padding_side=kwargs.get("padding_side"),
            )
        integer_ids = not (tokens.is_floating_point() or tokens.is_complex())
        for wrapper in wrappers:
            # Embeddings given instead of ids carry no token identity: nothing to exclude.
            wrapper.set_token_mask(
                special_token_mask(tokens, wrapper.exclude_special_tokens) if integer_ids else None
            )
        try:
            return super().forward(input, *args, **kwargs)
        finally:
            for wrapper in wrappers:
                wrapper.set_token_mask(None)
