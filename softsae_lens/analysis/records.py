"""What a SoftSAE did at each token: :class:`TokenRecord` and :func:`token_k_report`.

Holds the per-token record, the token classes the statistics group by (:func:`classify_token`),
:func:`sae_info` (the SAE facts written beside the records) and the function that reads records
from a model with the SAE spliced in.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from softsae_lens.analysis.splice import (
    ExcludeSpecial,
    bypassed_positions,
    check_soft,
    has_tokenizer,
    per_token_loss,
    sae_hook_name,
    special_token_ids,
    spliced_sae,
    to_token_batches,
)

__all__ = ["TOKEN_CLASSES", "TokenRecord", "classify_token", "sae_info", "token_k_report"]

# Token classes, in display order, with their labels.
TOKEN_CLASSES: dict[str, str] = {
    "first": "first position (BOS)",
    "whitespace_punct": "whitespace / punctuation",
    "number": "number",
    "word": "word",
    "special": "special token",
    "token_id": "token id (no tokenizer)",
}

_NUMBER = re.compile(r"[+\-]?[\d.,_]*\d[\d.,_]*%?")
_SAE_HOOKS = ("hook_sae_input", "hook_sae_k", "hook_sae_acts_post")


@dataclass
class TokenRecord:
    """What a SoftSAE did at one token.

    Attributes:
        text_index: which input text (or row of a token tensor) the token belongs to.
        position: position in that text's token sequence (0 is the BOS token when one is
            prepended).
        token_id: the token's id.
        token: the token's text (``model.to_str_tokens``), or the id as a string when the
            model has no tokenizer.
        token_class: one of :data:`TOKEN_CLASSES`.
        k_hat: the SAE's float prediction, as read on ``hook_sae_k``.
        k: the integer k the SAE used (``sae.round_k(k_hat)``: rounded and clamped to
            ``[1, floor(k_max)]``).
        l0: realised number of active latents (non-zero entries of ``hook_sae_acts_post``); below
            ``k`` only when fewer than ``k`` pre-activations are positive.
        recon_error: ``||x - sae.decode(acts)||^2`` in the model's units (the SAE's own
            reconstruction, also at excluded positions, where the model kept ``x``).
        recon_error_rel: ``recon_error / ||x||^2``.
        top_latents: up to N ``(latent index, activation)`` pairs, largest first, active ones only.
        loss: the clean model's cross-entropy at this position (predicting the next token);
            ``None`` at the last position.
        surprisal: the clean model's cross-entropy of this token given the prefix; ``None`` at
            position 0.
        loss_spliced: the same as ``loss`` with the SAE spliced in (no error term).
        excluded: a special token (BOS, EOS, PAD, ...) the SAE was not spliced at; every
            statistic leaves it out. Its ``k_hat``, ``l0`` and top latents are still what the
            SAE computes there. Always False when special tokens are included.
    """

    text_index: int
    position: int
    token_id: int
    token: str
    token_class: str
    k_hat: float
    k: int
    l0: int
    recon_error: float
    recon_error_rel: float
    top_latents: list[tuple[int, float]] = field(default_factory=list)
    loss: float | None = None
    surprisal: float | None = None
    loss_spliced: float | None = None
    excluded: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["top_latents"] = [[int(i), float(v)] for i, v in self.top_latents]
        return out


def classify_token(
    token: str, position: int, *, is_special: bool = False, has_text: bool = True
) -> str:
    """Token class used by the corpus statistics (a key of :data:`TOKEN_CLASSES`).

    Position 0 is always ``"first"``; then special tokens, then tokens with no text
    (``"token_id"``); whitespace and punctuation (and symbols) only is ``"whitespace_punct"``;
    digits with optional sign, separators and percent sign is ``"number"``; anything else is
    ``"word"``.
    """
    if position == 0:
        return "first"
    if is_special:
        return "special"
    if not has_text:
        return "token_id"
    stripped = token.strip()
    if not stripped or all(unicodedata.category(c)[0] in "PSZC" for c in stripped):
        return "whitespace_punct"
    if _NUMBER.fullmatch(stripped):
        return "number"
    return "word"


def sae_info(sae: Any) -> dict[str, Any]:
    """The SAE facts written beside the records: sizes, k, k_max, rounding, hook and model."""
    cfg = sae.cfg
    meta = cfg.metadata
    return {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": getattr(cfg, "k", None),
        "k_max": getattr(cfg, "k_max", None),
        "k_rounding": getattr(cfg, "k_rounding", None),
        "hook_name": meta.hook_name,
        "model_name": meta.model_name,
    }


def _str_tokens(model: Any, tokens: torch.Tensor) -> tuple[list[str], bool]:
    ids = tokens.tolist()
    if has_tokenizer(model):
        to_str = getattr(model, "to_str_tokens", None)
        if callable(to_str):
            return list(to_str(tokens)), True
        return [model.tokenizer.decode([i]) for i in ids], True
    return [str(i) for i in ids], False


def _special_ids(model: Any) -> set[int]:
    tokenizer = getattr(model, "tokenizer", None)
    return set(getattr(tokenizer, "all_special_ids", None) or [])


@torch.no_grad()
def token_k_report(
    model: Any,
    sae: Any,
    texts: str | torch.Tensor | Sequence[str] | Sequence[torch.Tensor],
    top_n: int = 8,
    *,
    max_tokens: int | None = None,
    include_loss: bool = True,
    exclude_special_tokens: ExcludeSpecial = True,
) -> list[TokenRecord]:
    """Per-token records of what ``sae`` does inside ``model`` on ``texts``.

    The SAE is spliced in without an error term (``use_error_term=False``) for one
    ``run_with_cache`` per input, caching only its ``hook_sae_input``, ``hook_sae_k`` and
    ``hook_sae_acts_post``; ``k_hat`` is the value seen on ``hook_sae_k`` (so a
    :func:`~softsae_lens.analysis.with_k_override` active around the call shows up here). The
    model, hooks included, is restored afterwards.

    Special tokens are left alone by default, as ``sae_lens.evals.run_evals`` does: at BOS, EOS,
    PAD, SEP (and decoder-start) positions the model keeps its own activation, so
    ``loss_spliced`` does not pay for reconstructing them (BOS's residual is often an outlier),
    and their records are marked ``excluded`` so that no statistic counts them.

    Args:
        model: ``HookedSAETransformer`` or ``SAETransformerBridge``.
        sae: a SoftSAE whose ``cfg.metadata.hook_name`` names a hook of ``model`` (an alias is
            fine on the bridge).
        texts: see :func:`~softsae_lens.analysis.to_token_batches`.
        top_n: number of top latents kept per token.
        max_tokens: truncate each text to this many tokens (default: the model's ``n_ctx``).
        include_loss: also run the clean model for ``loss`` / ``surprisal`` (one extra pass).
        exclude_special_tokens: True (default: the tokenizer's structural special tokens; none
            for a model without a tokenizer), False (splice and count every token), or a list
            of token ids.
    """
    check_soft(sae)
    names = {h: sae_hook_name(model, sae, h) for h in _SAE_HOOKS}
    special = _special_ids(model)
    excluded_ids = special_token_ids(model, exclude_special_tokens)
    records: list[TokenRecord] = []
    text_index = 0
    for tokens in to_token_batches(model, texts, max_tokens):
        clean = per_token_loss(model, tokens) if include_loss else None
        want_loss = tokens.shape[-1] >= 2
        with (
            spliced_sae(model, sae, exclude_special_tokens=excluded_ids),
            bypassed_positions(model, sae, tokens, excluded_ids) as excluded,
        ):
            output, cache = model.run_with_cache(
                tokens,
                names_filter=list(names.values()),
                return_type="loss" if want_loss else None,
                **({"loss_per_token": True} if want_loss else {}),
            )
        missing = [n for n in names.values() if n not in cache]
        if missing:
            raise RuntimeError(f"the model's cache lacks the SAE hooks {missing}")
        spliced_loss = output.detach().float() if want_loss else None
        x = cache[names["hook_sae_input"]].float()
        k_hat = cache[names["hook_sae_k"]].float()
        acts = cache[names["hook_sae_acts_post"]].float()
        # Not hook_sae_output: at excluded positions that holds the model's own activation.
        x_hat = sae.decode(cache[names["hook_sae_acts_post"]]).float()
        k_int = sae.round_k(k_hat)
        l0 = (acts != 0).sum(-1)
        err = (x - x_hat).pow(2).sum(-1)
        err_rel = err / x.pow(2).sum(-1).clamp(min=torch.finfo(torch.float32).tiny)
        width = min(top_n, acts.shape[-1])
        top_vals, top_idx = acts.topk(width, dim=-1) if width > 0 else (acts[..., :0],) * 2
        n_pos = tokens.shape[-1]
        # Python lists once per input: per-element tensor indexing is slow on long texts.
        k_hat_l, k_int_l, l0_l = k_hat.tolist(), k_int.tolist(), l0.tolist()
        err_l, rel_l = err.tolist(), err_rel.tolist()
        top_idx_l, top_vals_l = top_idx.tolist(), top_vals.tolist()
        excluded_l = excluded.tolist()
        clean_l = clean.tolist() if clean is not None else None
        spliced_l = spliced_loss.tolist() if spliced_loss is not None else None
        for row in range(tokens.shape[0]):
            strs, has_text = _str_tokens(model, tokens[row])
            ids = tokens[row].tolist()
            for pos in range(n_pos):
                top = [
                    (int(i), float(v))
                    for i, v in zip(top_idx_l[row][pos], top_vals_l[row][pos], strict=True)
                    if v != 0
                ]
                last = pos == n_pos - 1
                records.append(
                    TokenRecord(
                        text_index=text_index,
                        position=pos,
                        token_id=ids[pos],
                        token=strs[pos],
                        token_class=classify_token(
                            strs[pos], pos, is_special=ids[pos] in special, has_text=has_text
                        ),
                        k_hat=k_hat_l[row][pos],
                        k=k_int_l[row][pos],
                        l0=l0_l[row][pos],
                        recon_error=err_l[row][pos],
                        recon_error_rel=rel_l[row][pos],
                        top_latents=top,
                        loss=None if clean_l is None or last else clean_l[row][pos],
                        surprisal=None if clean_l is None or pos == 0 else clean_l[row][pos - 1],
                        loss_spliced=None if spliced_l is None or last else spliced_l[row][pos],
                        excluded=excluded_l[row][pos],
                    )
                )
            text_index += 1
    return records
