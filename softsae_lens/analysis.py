"""Per-token k of a SoftSAE in TransformerLens: read it, look at it, intervene on it.

A SoftSAE predicts for every token how many latents it needs (``k_hat``), a signal no fixed-k
SAE has. This module reads that signal through the SAE's ``hook_sae_k`` HookPoint while the SAE
is spliced into a model, and works the same on SAELens's ``HookedSAETransformer`` and
``SAETransformerBridge`` (the bridge moves the SAE's hooks under the resolved hook name, e.g.
``blocks.5.hook_out.hook_sae_k``; :func:`sae_hook_name` hides that).

Reading:
    :func:`token_k_report` runs texts (or token tensors) through the model with the SAE spliced
    in and returns one :class:`TokenRecord` per token: token string, position, ``k_hat``, the
    integer k the SAE used, realised L0, reconstruction error, top latents, and the clean
    model's per-token loss.

Intervening:
    :func:`with_k_override` is a context manager that replaces ``k_hat`` on the hook with a fixed
    k, a scaled k or a capped k; :func:`loss_with_k_override` reports the model's loss clean,
    with the SAE spliced in, and with the override.

Corpus statistics and views:
    :func:`k_stats_by_class` (k_hat per token class), :func:`k_loss_spearman` (rank correlation of
    k_hat with the per-token loss), :func:`corpus_stats`, :func:`render_html` (a self-contained
    page, tokens shaded by k_hat, hover/click for top latents), :func:`plot_tokens_png`,
    :func:`plot_corpus_stats` and :func:`write_analysis` (all files at once). Plots need
    matplotlib; nothing else here does.
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "K_COLORS",
    "TOKEN_CLASSES",
    "KOverrideLoss",
    "TokenRecord",
    "classify_token",
    "corpus_stats",
    "k_loss_spearman",
    "k_override_fn",
    "k_stats_by_class",
    "loss_with_k_override",
    "plot_corpus_stats",
    "plot_tokens_png",
    "render_html",
    "sae_hook_name",
    "spliced_sae",
    "to_token_batches",
    "token_k_report",
    "with_k_override",
    "write_analysis",
]

# Token classes, in display order, with their labels.
TOKEN_CLASSES: dict[str, str] = {
    "first": "first position (BOS)",
    "whitespace_punct": "whitespace / punctuation",
    "number": "number",
    "word": "word",
    "special": "special token",
    "token_id": "token id (no tokenizer)",
}

# Sequential colour scale for k_hat, light (few latents) to dark (many): ColorBrewer YlGnBu.
# The HTML and the PNG interpolate the same anchors.
K_COLORS: tuple[str, ...] = (
    "#ffffd9",
    "#edf8b1",
    "#c7e9b4",
    "#7fcdbb",
    "#41b6c4",
    "#1d91c0",
    "#225ea8",
    "#253494",
    "#081d58",
)

_NUMBER = re.compile(r"[+\-]?[\d.,_]*\d[\d.,_]*%?")
_SAE_HOOKS = ("hook_sae_input", "hook_sae_k", "hook_sae_acts_post", "hook_sae_output")


# ------------------------------------------------------------------------------- records


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
        recon_error: ``||x - sae(x)||^2`` in the model's units.
        recon_error_rel: ``recon_error / ||x||^2``.
        top_latents: up to N ``(latent index, activation)`` pairs, largest first, active ones only.
        loss: the clean model's cross-entropy at this position (predicting the next token);
            ``None`` at the last position.
        surprisal: the clean model's cross-entropy of this token given the prefix; ``None`` at
            position 0.
        loss_spliced: the same as ``loss`` with the SAE spliced in (no error term).
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


# ------------------------------------------------------------------------- model plumbing


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


def _check_soft(sae: Any) -> None:
    if not hasattr(sae, "hook_sae_k") or not callable(getattr(sae, "round_k", None)):
        raise TypeError(
            f"expected a SoftSAE (architecture 'soft', with hook_sae_k), got {type(sae).__name__}"
        )


@contextmanager
def spliced_sae(model: Any, sae: Any, use_error_term: bool = False) -> Iterator[Any]:
    """Splice ``sae`` into ``model`` for the duration of the block; restore the model after.

    Unlike SAELens's own ``add_sae``, which logs a warning and does nothing when the SAE's hook
    name does not exist on the model, this raises a ValueError naming the hook.
    """
    _check_model(model)
    with model.saes(saes=[sae], use_error_term=use_error_term):
        name = sae_hook_name(model, sae, "hook_sae_k")
        if name not in model.hook_dict:
            raise ValueError(
                f"the SAE was not attached: its hook name {sae.cfg.metadata.hook_name!r} is not a "
                f"hook of {type(model).__name__} (expected {name!r} in model.hook_dict)"
            )
        yield model


def _has_tokenizer(model: Any) -> bool:
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
            if not _has_tokenizer(model):
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


def _str_tokens(model: Any, tokens: torch.Tensor) -> tuple[list[str], bool]:
    ids = tokens.tolist()
    if _has_tokenizer(model):
        to_str = getattr(model, "to_str_tokens", None)
        if callable(to_str):
            return list(to_str(tokens)), True
        return [model.tokenizer.decode([i]) for i in ids], True
    return [str(i) for i in ids], False


def _special_ids(model: Any) -> set[int]:
    tokenizer = getattr(model, "tokenizer", None)
    return set(getattr(tokenizer, "all_special_ids", None) or [])


def _per_token_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos - 1]`` cross-entropy of each next token, as float32."""
    if tokens.shape[-1] < 2:
        return torch.zeros(tokens.shape[0], 0)
    return model(tokens, return_type="loss", loss_per_token=True).detach().float()


# ------------------------------------------------------------------------------- reading


@torch.no_grad()
def token_k_report(
    model: Any,
    sae: Any,
    texts: str | torch.Tensor | Sequence[str] | Sequence[torch.Tensor],
    top_n: int = 8,
    *,
    max_tokens: int | None = None,
    include_loss: bool = True,
) -> list[TokenRecord]:
    """Per-token records of what ``sae`` does inside ``model`` on ``texts``.

    The SAE is spliced in without an error term (``use_error_term=False``) for one
    ``run_with_cache`` per input, caching only its ``hook_sae_input``, ``hook_sae_k``,
    ``hook_sae_acts_post`` and ``hook_sae_output``; ``k_hat`` is the value seen on
    ``hook_sae_k`` (so a :func:`with_k_override` active around the call shows up here). The
    model is restored afterwards.

    Args:
        model: ``HookedSAETransformer`` or ``SAETransformerBridge``.
        sae: a SoftSAE whose ``cfg.metadata.hook_name`` names a hook of ``model`` (an alias is
            fine on the bridge).
        texts: see :func:`to_token_batches`.
        top_n: number of top latents kept per token.
        max_tokens: truncate each text to this many tokens (default: the model's ``n_ctx``).
        include_loss: also run the clean model for ``loss`` / ``surprisal`` (one extra pass).
    """
    _check_soft(sae)
    names = {h: sae_hook_name(model, sae, h) for h in _SAE_HOOKS}
    special = _special_ids(model)
    records: list[TokenRecord] = []
    text_index = 0
    for tokens in to_token_batches(model, texts, max_tokens):
        clean = _per_token_loss(model, tokens) if include_loss else None
        with spliced_sae(model, sae, use_error_term=False):
            want_loss = tokens.shape[-1] >= 2
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
        x_hat = cache[names["hook_sae_output"]].float()
        k_hat = cache[names["hook_sae_k"]].float()
        acts = cache[names["hook_sae_acts_post"]].float()
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
                    )
                )
            text_index += 1
    return records


# --------------------------------------------------------------------------- intervening


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
def with_k_override(
    model: Any | None,
    sae: Any,
    *,
    k: float | None = None,
    scale: float | None = None,
    cap: float | None = None,
    splice: bool = True,
    use_error_term: bool = False,
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

    Yields:
        ``model`` (or ``sae`` when ``model`` is None).

    Example::

        with with_k_override(model, sae, k=1):
            loss = model(tokens, return_type="loss")
    """
    _check_soft(sae)
    fn = k_override_fn(sae, k=k, scale=scale, cap=cap)
    if splice and model is None:
        raise ValueError("splice=True needs a model; pass splice=False to override the bare SAE")

    def hook(k_hat: torch.Tensor, hook: Any) -> torch.Tensor:
        return fn(k_hat)

    hook_point = sae.hook_sae_k
    with ExitStack() as stack:
        if splice:
            stack.enter_context(spliced_sae(model, sae, use_error_term=use_error_term))
        hook_point.add_hook(hook, dir="fwd", is_permanent=True)
        handle = hook_point.fwd_hooks[-1]
        try:
            yield model if model is not None else sae
        finally:
            handle.hook.remove()
            hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not handle]


@dataclass
class KOverrideLoss:
    """Losses from :func:`loss_with_k_override`.

    Means are over every predicted token; the ``*_per_token`` tensors hold the per-token
    cross-entropies of all inputs, each input's ``[batch, pos - 1]`` flattened row-major and
    concatenated in input order. L0 and ``k_hat`` means are over every position.
    """

    clean: float
    spliced: float
    override: float
    clean_per_token: torch.Tensor
    spliced_per_token: torch.Tensor
    override_per_token: torch.Tensor
    k_hat_mean: float
    l0_spliced_mean: float
    l0_override_mean: float
    override_args: dict[str, float]

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
) -> KOverrideLoss:
    """The model's loss clean, with ``sae`` spliced in (no error term), and with ``k`` overridden.

    ``tokens`` takes anything :func:`to_token_batches` does; ``k``/``scale``/``cap`` as in
    :func:`with_k_override` (exactly one).
    """
    _check_soft(sae)
    k_override_fn(sae, k=k, scale=scale, cap=cap)  # validate before any forward pass
    args = {n: float(v) for n, v in (("k", k), ("scale", scale), ("cap", cap)) if v is not None}
    k_name = sae_hook_name(model, sae, "hook_sae_k")
    acts_name = sae_hook_name(model, sae, "hook_sae_acts_post")
    clean, spliced, override = [], [], []
    k_hats, l0_spliced, l0_override = [], [], []

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, cache = model.run_with_cache(
            tokens_b, names_filter=[k_name, acts_name], return_type="loss", loss_per_token=True
        )
        return loss.float().flatten(), cache[k_name].float(), (cache[acts_name] != 0).sum(-1)

    for tokens_b in to_token_batches(model, tokens, max_tokens):
        if tokens_b.shape[-1] < 2:
            raise ValueError("every input needs at least 2 tokens to have a loss")
        clean.append(_per_token_loss(model, tokens_b).flatten())
        with spliced_sae(model, sae, use_error_term=False):
            loss, k_hat, l0 = run()
        spliced.append(loss)
        k_hats.append(k_hat.flatten())
        l0_spliced.append(l0.flatten().float())
        with with_k_override(model, sae, k=k, scale=scale, cap=cap):
            loss, _, l0 = run()
        override.append(loss)
        l0_override.append(l0.flatten().float())

    cat = torch.cat
    return KOverrideLoss(
        clean=float(cat(clean).mean()),
        spliced=float(cat(spliced).mean()),
        override=float(cat(override).mean()),
        clean_per_token=cat(clean).cpu(),
        spliced_per_token=cat(spliced).cpu(),
        override_per_token=cat(override).cpu(),
        k_hat_mean=float(cat(k_hats).mean()),
        l0_spliced_mean=float(cat(l0_spliced).mean()),
        l0_override_mean=float(cat(l0_override).mean()),
        override_args=args,
    )


# ---------------------------------------------------------------------- corpus statistics


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _summary(values: torch.Tensor) -> dict[str, float | int | None]:
    values = values.double()
    n = values.numel()
    out: dict[str, float | int | None] = {"count": n}
    if n == 0:
        return out
    qs = torch.quantile(values, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))
    out.update(
        mean=float(values.mean()),
        std=float(values.std()) if n > 1 else 0.0,
        min=float(values.min()),
        p5=float(qs[0]),
        p25=float(qs[1]),
        median=float(qs[2]),
        p75=float(qs[3]),
        p95=float(qs[4]),
        max=float(values.max()),
    )
    return out


def k_stats_by_class(records: Sequence[TokenRecord]) -> dict[str, dict[str, Any]]:
    """``k_hat`` summary (count, mean, std, min, p5, p25, median, p75, p95, max) per token
    class, plus the class's mean L0, under ``"all"`` for every token as well. Classes with no
    tokens are left out."""
    out: dict[str, dict[str, Any]] = {}
    for cls in [*TOKEN_CLASSES, "all"]:
        members = [r for r in records if cls == "all" or r.token_class == cls]
        if not members:
            continue
        stats = _summary(torch.tensor([r.k_hat for r in members]))
        stats["l0_mean"] = sum(r.l0 for r in members) / len(members)
        stats["label"] = TOKEN_CLASSES.get(cls, "all tokens")
        out[cls] = stats
    return out


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    n = values.numel()
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    n_groups = int(group[-1]) + 1
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(
        0, group, torch.ones(n, dtype=torch.float64)
    )
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def _spearman(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float | None]:
    rx, ry = _average_ranks(x.double()), _average_ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx.pow(2).sum()) * float(ry.pow(2).sum()))
    if denom == 0:
        return math.nan, None
    rho = max(-1.0, min(1.0, float((rx * ry).sum()) / denom))
    n = x.numel()
    p_value = None
    try:
        from scipy import stats

        if n > 2 and abs(rho) < 1:
            t = rho * math.sqrt((n - 2) / (1 - rho * rho))
            p_value = float(2 * stats.t.sf(abs(t), n - 2))
        elif n > 2:
            p_value = 0.0
    except ImportError:  # pragma: no cover - scipy ships with sae-lens's dependencies
        pass
    return rho, p_value


def k_loss_spearman(
    records: Sequence[TokenRecord], target: str = "loss", include_first: bool = False
) -> dict[str, Any]:
    """Spearman rank correlation between ``k_hat`` and a per-token quantity.

    Args:
        target: ``"loss"`` (the clean model's next-token loss at the token's position),
            ``"surprisal"`` (the loss of the token itself), ``"loss_spliced"``, ``"recon_error"``
            or ``"l0"``.
        include_first: include position 0 (BOS), whose residual is an outlier in most models.

    Returns:
        ``{"target", "rho", "p_value", "n"}``; ``rho`` is None when fewer than 3 tokens have
        the target or either side is constant. ``p_value`` is the usual t approximation (as
        ``scipy.stats.spearmanr``).
    """
    pairs = [
        (r.k_hat, getattr(r, target))
        for r in records
        if getattr(r, target) is not None and (include_first or r.position > 0)
    ]
    out: dict[str, Any] = {"target": target, "rho": None, "p_value": None, "n": len(pairs)}
    if len(pairs) >= 3:
        x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        y = torch.tensor([float(p[1]) for p in pairs], dtype=torch.float64)
        rho, p_value = _spearman(x, y)
        out["rho"], out["p_value"] = _finite(rho), p_value
    return out


def corpus_stats(records: Sequence[TokenRecord], sae: Any | None = None) -> dict[str, Any]:
    """Everything ``corpus_stats.json`` holds: per-class ``k_hat`` statistics, Spearman of
    ``k_hat`` with the next-token loss, the token's surprisal and the reconstruction error,
    and mean losses."""

    def mean_of(attr: str) -> float | None:
        vals = [getattr(r, attr) for r in records if getattr(r, attr) is not None]
        return sum(vals) / len(vals) if vals else None

    out: dict[str, Any] = {
        "n_tokens": len(records),
        "n_texts": len({r.text_index for r in records}),
        "k_hat_mean": mean_of("k_hat"),
        "l0_mean": mean_of("l0"),
        "recon_error_rel_mean": mean_of("recon_error_rel"),
        "loss_clean_mean": mean_of("loss"),
        "loss_spliced_mean": mean_of("loss_spliced"),
        "k_hat_by_class": k_stats_by_class(records),
        "spearman_k_hat_vs_loss": k_loss_spearman(records, "loss"),
        "spearman_k_hat_vs_surprisal": k_loss_spearman(records, "surprisal"),
        "spearman_k_hat_vs_recon_error": k_loss_spearman(records, "recon_error"),
    }
    if sae is not None:
        out["sae"] = _sae_info(sae)
    return out


def _sae_info(sae: Any) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------- colours


def _hex_to_rgb(color: str) -> tuple[float, float, float]:
    return tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _color_for(value: float, vmin: float, vmax: float) -> tuple[str, str]:
    """Background (interpolated :data:`K_COLORS`) and a readable text colour."""
    t = 0.5 if vmax <= vmin else min(1.0, max(0.0, (value - vmin) / (vmax - vmin)))
    pos = t * (len(K_COLORS) - 1)
    lo = min(int(pos), len(K_COLORS) - 2)
    frac = pos - lo
    a, b = _hex_to_rgb(K_COLORS[lo]), _hex_to_rgb(K_COLORS[lo + 1])
    rgb = [x + (y - x) * frac for x, y in zip(a, b, strict=True)]
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    bg = "#" + "".join(f"{round(c * 255):02x}" for c in rgb)
    return bg, ("#ffffff" if luminance < 0.45 else "#111111")


def _k_range(records: Sequence[TokenRecord], min_span: float = 1.0) -> tuple[float, float]:
    """The records' ``k_hat`` range, widened to at least ``min_span`` (one latent) around its
    middle so that float noise on a near-constant k_hat does not become a full colour sweep."""
    values = [r.k_hat for r in records]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return lo, hi


# ---------------------------------------------------------------------------------- HTML

_CSS = """
:root { --panel-w: 340px; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1b1b1b; background: #fafafa; }
header { padding: 14px 20px 10px; border-bottom: 1px solid #ddd; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
.meta { color: #555; margin: 0 0 8px; font-size: 13px; }
.legend { display: flex; align-items: center; gap: 10px; font-size: 12px; color: #333; }
.legend .bar { width: 320px; height: 14px; border: 1px solid #999; border-radius: 2px; }
.legend .ticks { display: flex; justify-content: space-between; width: 320px; }
.legend .scale { display: flex; flex-direction: column; gap: 2px; }
main { display: flex; align-items: flex-start; gap: 16px; padding: 16px 20px; }
.docs { flex: 1 1 auto; min-width: 0; }
.doc { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 12px;
  margin-bottom: 14px; }
.doc-title { font-size: 12px; color: #666; margin-bottom: 6px; }
.text { font: 15px/1.9 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 2px; padding: 1px 0; cursor: pointer;
  box-shadow: inset -1px 0 0 rgba(255,255,255,0.55); }
.tok.id { padding: 1px 3px; margin-right: 3px; }
.tok:hover, .tok:focus { outline: 2px solid #e4572e; outline-offset: 0; }
.tok.pinned { outline: 2px solid #d00000; }
.tok .nl, .tok .mark { opacity: 0.6; font-size: 0.85em; }
aside#panel { flex: 0 0 var(--panel-w); position: sticky; top: 12px; background: #fff;
  border: 1px solid #ddd; border-radius: 6px; padding: 10px 12px; font-size: 13px;
  max-height: calc(100vh - 24px); overflow: auto; }
aside#panel h2 { font-size: 14px; margin: 0 0 6px; }
#tip { position: fixed; z-index: 10; pointer-events: none; background: #222; color: #f4f4f4;
  padding: 8px 10px; border-radius: 5px; font-size: 12px; max-width: 360px;
  box-shadow: 0 2px 8px rgba(0,0,0,0.3); }
#tip[hidden] { display: none; }
table.kv { border-collapse: collapse; width: 100%; }
table.kv td { padding: 1px 4px; vertical-align: top; }
table.kv td:first-child { color: #777; white-space: nowrap; }
#tip table.kv td:first-child { color: #bbb; }
.toktext { font-family: ui-monospace, "DejaVu Sans Mono", monospace; background: #eee;
  color: #111; padding: 0 3px; border-radius: 2px; white-space: pre; }
.lat { display: grid; grid-template-columns: 62px 62px 1fr; gap: 4px; align-items: center;
  margin: 1px 0; font-variant-numeric: tabular-nums; }
.lat .b { height: 9px; background: #1d91c0; border-radius: 2px; }
.hint { color: #777; }
"""

# No "</" inside the script (it would end a <script> early for strict parsers): the DOM is
# built with createElement and textContent, never innerHTML.
_JS = """
(function () {
  var tip = document.getElementById('tip');
  var panel = document.getElementById('panel-body');
  var pinned = null;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function row(table, key, value) {
    var tr = el('tr');
    tr.appendChild(el('td', null, key));
    var td = el('td');
    if (value instanceof Node) { td.appendChild(value); } else { td.textContent = value; }
    tr.appendChild(td);
    table.appendChild(tr);
  }
  function visible(s) {
    return s.split('\\n').join('\\u21b5').split('\\t').join('\\u21e5').split(' ').join('\\u2423');
  }
  function details(t, full) {
    var d = t.dataset;
    var box = el('div');
    var table = el('table', 'kv');
    row(table, 'token', el('span', 'toktext', visible(d.tok) || '\\u2205'));
    row(table, 'text / pos', d.doc + ' / ' + d.pos + (full ? '  (id ' + d.id + ')' : ''));
    row(table, 'k_hat', d.k + '  (k = ' + d.kint + ')');
    row(table, 'L0', d.l0);
    row(table, 'recon err', d.err + '  (rel ' + d.rel + ')');
    if (d.loss) { row(table, 'next-token loss', d.loss); }
    if (full && d.spl) { row(table, 'loss, SAE spliced', d.spl); }
    if (full) { row(table, 'class', d.cls); }
    box.appendChild(table);
    var pairs = d.top ? d.top.split(' ') : [];
    var shown = full ? pairs : pairs.slice(0, 5);
    box.appendChild(el('div', 'hint', pairs.length ? 'top latents (index, activation)' : 'no active latents'));
    var maxv = 0;
    pairs.forEach(function (p) { maxv = Math.max(maxv, parseFloat(p.split(':')[1])); });
    shown.forEach(function (p) {
      var parts = p.split(':');
      var line = el('div', 'lat');
      line.appendChild(el('span', null, '#' + parts[0]));
      line.appendChild(el('span', null, parts[1]));
      var bar = el('div', 'b');
      bar.style.width = (maxv > 0 ? 100 * parseFloat(parts[1]) / maxv : 0) + '%';
      line.appendChild(bar);
      box.appendChild(line);
    });
    if (!full && pairs.length > shown.length) {
      box.appendChild(el('div', 'hint', '+' + (pairs.length - shown.length) + ' more: click to pin'));
    }
    return box;
  }
  function place(ev) {
    var pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    var x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth) { x = Math.max(0, ev.clientX - w - pad); }
    if (y + h > window.innerHeight) { y = Math.max(0, ev.clientY - h - pad); }
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }
  function pin(t) {
    if (pinned) { pinned.classList.remove('pinned'); }
    pinned = t;
    t.classList.add('pinned');
    panel.replaceChildren(details(t, true));
  }
  document.addEventListener('mouseover', function (ev) {
    var t = ev.target.closest ? ev.target.closest('.tok') : null;
    if (!t) { tip.hidden = true; return; }
    tip.replaceChildren(details(t, false));
    tip.hidden = false;
    place(ev);
  });
  document.addEventListener('mousemove', function (ev) { if (!tip.hidden) { place(ev); } });
  document.addEventListener('click', function (ev) {
    var t = ev.target.closest ? ev.target.closest('.tok') : null;
    if (t) { pin(t); }
  });
  document.addEventListener('keydown', function (ev) {
    var t = document.activeElement;
    if ((ev.key === 'Enter' || ev.key === ' ') && t && t.classList && t.classList.contains('tok')) {
      ev.preventDefault();
      pin(t);
    }
  });
  document.querySelectorAll('.tok').forEach(function (t) { t.removeAttribute('title'); });
})();
"""


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return (
        f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"
    )


def _token_html(token: str) -> str:
    """A token's visible content: escaped text, newlines as a faint arrow plus a line break."""
    if token == "":
        return '<span class="mark">\u2205</span>'
    parts = token.split("\n")
    pieces = [html.escape(parts[0], quote=False)]
    for part in parts[1:]:
        pieces.append('<span class="nl">\u21b5</span><br>')
        pieces.append(html.escape(part, quote=False))
    return "".join(pieces)


def _token_title(r: TokenRecord) -> str:
    top = ", ".join(f"#{i} {v:.2f}" for i, v in r.top_latents[:5])
    return (
        f"{r.token!r}  k_hat={r.k_hat:.2f} (k={r.k})  L0={r.l0}  "
        f"recon err={_fmt(r.recon_error)}\ntop: {top or 'none'}"
    )


def render_html(
    records: Sequence[TokenRecord],
    *,
    title: str = "SoftSAE: latents per token",
    subtitle: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> str:
    """A self-contained HTML page (inline CSS and JS, no external resource) of the texts with
    every token shaded by ``k_hat``.

    Each token is a ``<span class="tok">`` carrying its numbers in ``data-*`` attributes (and a
    ``title`` tooltip as a no-JavaScript fallback): hovering shows a tooltip with ``k_hat``, L0,
    reconstruction error, loss and the top latents; clicking pins them in the side panel.
    Newlines show as a faint arrow and a line break, spaces are kept (``white-space:
    pre-wrap``). The colour scale runs from ``vmin`` to ``vmax`` (default: the records' range).
    """
    lo, hi = _k_range(records)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    docs: dict[int, list[TokenRecord]] = {}
    for r in records:
        docs.setdefault(r.text_index, []).append(r)

    def attr(value: Any) -> str:
        return html.escape(str(value), quote=True)

    body = []
    for doc_index, toks in docs.items():
        mean_k = sum(r.k_hat for r in toks) / len(toks)
        mean_l0 = sum(r.l0 for r in toks) / len(toks)
        spans = []
        # Texts of a model with no tokenizer show ids: space them apart (BOS included).
        cls = "tok id" if any(r.token_class == "token_id" for r in toks) else "tok"
        for r in toks:
            bg, fg = _color_for(r.k_hat, vmin, vmax)
            top = " ".join(f"{i}:{v:.3f}" for i, v in r.top_latents)
            spans.append(
                f'<span class="{cls}" tabindex="0" style="background:{bg};color:{fg}"'
                f' data-doc="{r.text_index}" data-pos="{r.position}" data-id="{r.token_id}"'
                f' data-tok="{attr(r.token)}" data-cls="{attr(r.token_class)}"'
                f' data-k="{r.k_hat:.3f}" data-kint="{r.k}" data-l0="{r.l0}"'
                f' data-err="{attr(_fmt(r.recon_error))}" data-rel="{attr(_fmt(r.recon_error_rel))}"'
                f' data-loss="{attr(_fmt(r.loss))}" data-spl="{attr(_fmt(r.loss_spliced))}"'
                f' data-top="{attr(top)}" title="{attr(_token_title(r))}">'
                f"{_token_html(r.token)}</span>"
            )
        body.append(
            f'<div class="doc" data-doc="{doc_index}"><div class="doc-title">text {doc_index}'
            f" &middot; {len(toks)} tokens &middot; mean k_hat {mean_k:.2f} &middot; mean L0"
            f' {mean_l0:.2f}</div><div class="text">{"".join(spans)}</div></div>'
        )

    gradient = ", ".join(K_COLORS)
    mid = (vmin + vmax) / 2
    n_tokens = len(records)
    mean_all = sum(r.k_hat for r in records) / n_tokens if n_tokens else float("nan")
    summary = f"{n_tokens} tokens &middot; mean k_hat {mean_all:.2f}"
    if subtitle:
        summary = f"{html.escape(subtitle)} &middot; {summary}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">{summary}. Shading: k_hat, the number of latents the SoftSAE '
        "predicts for the token. Hover a token for its top latents; click to pin it.</p>\n"
        '<div class="legend"><span>k_hat</span><div class="scale">'
        f'<div class="bar" style="background:linear-gradient(to right, {gradient})"></div>'
        f'<div class="ticks"><span>{vmin:.2f}</span><span>{mid:.2f}</span>'
        f"<span>{vmax:.2f}</span></div></div>"
        "<span>(few latents &rarr; many latents)</span></div>\n</header>\n"
        f'<main>\n<section class="docs">\n{"".join(body)}\n</section>\n'
        '<aside id="panel"><h2>Token details</h2><div id="panel-body" class="hint">'
        "Click a token to pin its k_hat, L0, reconstruction error, loss and top latents "
        "here.</div></aside>\n</main>\n"
        '<div id="tip" role="tooltip" hidden></div>\n'
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    # A bare Figure with an Agg canvas: no pyplot, so no global backend switch or open windows.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "the PNG views need matplotlib: pip install matplotlib (or pass png=False to "
            "write_analysis, --no-png to the CLI)"
        ) from err

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _cmap() -> Any:
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("k_hat", list(K_COLORS))


def _png_token_pieces(token: str) -> list[str]:
    """A token's text split into one piece per line (newlines become a trailing arrow)."""
    if token == "":
        return ["\u2205"]
    lines = token.replace("\t", "    ").split("\n")
    return [line + "\u21b5" for line in lines[:-1]] + [lines[-1]]


def plot_tokens_png(
    records: Sequence[TokenRecord],
    path: str | Path,
    *,
    title: str = "SoftSAE: latents per token (k_hat)",
    vmin: float | None = None,
    vmax: float | None = None,
    width_in: float = 12.0,
    max_tokens: int = 1500,
) -> Path:
    """The HTML page's view as a PNG: tokens laid out as monospace text, each on a background
    coloured by ``k_hat`` (same scale as :func:`render_html`), a colorbar below. Shows the
    first ``max_tokens`` tokens."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    lo, hi = _k_range(records)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = list(records[:max_tokens])
    font_size = 10.0
    char_w = 0.602 * font_size  # DejaVu Sans Mono advance width, in points
    line_h = 1.75 * font_size
    margin = 30.0
    usable = width_in * 72 - 2 * margin

    # Layout in points, y growing downwards.
    boxes: list[tuple[float, float, float, str, TokenRecord, bool]] = []
    labels: list[tuple[float, str]] = []
    y = 0.0
    x = 0.0
    current_doc = None
    id_docs = {r.text_index for r in shown if r.token_class == "token_id"}
    for r in shown:
        ids = r.text_index in id_docs
        if r.text_index != current_doc:
            y += line_h * (0.6 if current_doc is None else 1.5)
            labels.append((y, f"text {r.text_index}"))
            y += line_h
            x = 0.0
            current_doc = r.text_index
        pieces = _png_token_pieces(r.token)
        for i, text in enumerate(pieces):
            if i > 0:  # the token held a newline: the rest goes on the next line
                x, y = 0.0, y + line_h
            if not text:
                continue
            w = len(text) * char_w + (char_w * 0.6 if ids else 0)
            if x > 0 and x + w > usable:
                x, y = 0.0, y + line_h
            boxes.append((x, y, w, text, r, ids))
            x += w + (char_w * 0.6 if ids else 0)
    content_h = y + line_h
    header_h, footer_h = 40.0, 70.0
    height_pt = header_h + content_h + footer_h
    fig = _figure(width_in, height_pt / 72)
    ax = fig.add_axes((0, footer_h / height_pt, 1, content_h / height_pt))
    ax.set_xlim(-margin, usable + margin)
    ax.set_ylim(content_h, 0)
    ax.axis("off")
    cmap = _cmap()
    norm = Normalize(vmin=vmin, vmax=vmax)
    rects, colors = [], []
    for bx, by, w, text, r, ids in boxes:
        rects.append(Rectangle((bx, by - line_h * 0.78), w, line_h * 0.92))
        bg, fg = _color_for(r.k_hat, vmin, vmax)
        colors.append(bg)
        ax.text(
            bx + (char_w * 0.3 if ids else 0),
            by - line_h * 0.27,
            text,
            fontsize=font_size,
            family="DejaVu Sans Mono",
            color=fg,
            va="baseline",
            ha="left",
        )
    ax.add_collection(PatchCollection(rects, facecolors=colors, edgecolors="white", linewidths=0.4))
    for ly, label in labels:
        ax.text(0, ly - line_h * 0.2, label, fontsize=8, color="#666666", style="italic")
    suffix = f" (first {max_tokens} of {len(records)} tokens)" if len(records) > max_tokens else ""
    fig.suptitle(title + suffix, y=1 - 12 / height_pt, fontsize=12)
    cax = fig.add_axes((0.25, 28 / height_pt, 0.5, 12 / height_pt))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.formatter.set_useOffset(False)
    bar.update_ticks()
    bar.set_label("k_hat (latents the SoftSAE predicts for the token)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_corpus_stats(
    records: Sequence[TokenRecord],
    path: str | Path,
    *,
    k_target: float | None = None,
    title: str = "SoftSAE k_hat over the corpus",
) -> Path:
    """Two panels: ``k_hat`` per token class (box plot with the points jittered on top), and
    ``k_hat`` against the clean model's next-token loss with the Spearman rho in the title."""
    fig = _figure(12.5, 4.8)
    ax_box, ax_scatter = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    classes = [c for c in TOKEN_CLASSES if any(r.token_class == c for r in records)]
    palette = dict(
        zip(
            TOKEN_CLASSES,
            ("#7f7f7f", "#e4572e", "#17becf", "#1d4e89", "#9467bd", "#8c564b"),
            strict=False,
        )
    )
    data = [[r.k_hat for r in records if r.token_class == c] for c in classes]
    if data:
        ax_box.boxplot(data, showfliers=False, widths=0.55)
        gen = torch.Generator().manual_seed(0)
        for i, (c, values) in enumerate(zip(classes, data, strict=True), start=1):
            jitter = (torch.rand(len(values), generator=gen) - 0.5) * 0.35
            ax_box.scatter(
                (i + jitter).tolist(), values, s=7, alpha=0.45, color=palette[c], linewidths=0
            )
        ax_box.set_xticks(
            range(1, len(classes) + 1),
            [f"{TOKEN_CLASSES[c]}\n(n={len(v)})" for c, v in zip(classes, data, strict=True)],
            fontsize=8,
        )
    if k_target is not None:
        ax_box.axhline(k_target, color="#999999", ls="--", lw=1, label=f"SAE k = {k_target:g}")
        ax_box.legend(fontsize=8, loc="upper right")
    ax_box.set_ylabel("k_hat")
    ax_box.set_title("k_hat per token class", fontsize=11)

    spearman = k_loss_spearman(records, "loss")
    for c in classes:
        pts = [(r.loss, r.k_hat) for r in records if r.token_class == c and r.loss is not None]
        pts = [p for p in pts if c != "first"]  # position 0 is left out of the correlation
        if pts:
            ax_scatter.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                s=10,
                alpha=0.6,
                color=palette[c],
                label=TOKEN_CLASSES[c],
                linewidths=0,
            )
    rho = spearman["rho"]
    rho_text = "n/a" if rho is None else f"{rho:+.3f}"
    p_value = spearman["p_value"]
    p_text = "" if p_value is None else f", p = {p_value:.2g}"
    ax_scatter.set_title(
        f"k_hat vs next-token loss: Spearman \u03c1 = {rho_text} (n = {spearman['n']}{p_text})",
        fontsize=11,
    )
    ax_scatter.set_xlabel("clean model's next-token loss (nats), positions > 0")
    ax_scatter.set_ylabel("k_hat")
    if classes:
        ax_scatter.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------ writing


def write_analysis(
    records: Sequence[TokenRecord],
    out_dir: str | Path,
    *,
    sae: Any | None = None,
    meta: dict[str, Any] | None = None,
    title: str = "SoftSAE: latents per token",
    png: bool = True,
) -> dict[str, Path]:
    """Write ``tokens.html``, ``records.json``, ``corpus_stats.json`` and, with ``png`` (needs
    matplotlib), ``tokens.png`` and ``corpus_stats.png`` into ``out_dir``.

    Returns the written paths by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {})
    if sae is not None:
        info.setdefault("sae", _sae_info(sae))
    subtitle_bits = []
    sae_info = info.get("sae") or {}
    if info.get("model"):
        subtitle_bits.append(str(info["model"]))
    if sae_info.get("hook_name"):
        subtitle_bits.append(str(sae_info["hook_name"]))
    if sae_info.get("k") is not None:
        subtitle_bits.append(f"SAE k={sae_info['k']}, k_max={sae_info.get('k_max')}")
    paths = {
        "html": out / "tokens.html",
        "records": out / "records.json",
        "corpus_stats": out / "corpus_stats.json",
    }
    paths["html"].write_text(
        render_html(records, title=title, subtitle=" \u00b7 ".join(subtitle_bits)),
        encoding="utf-8",
    )
    paths["records"].write_text(
        json.dumps({**info, "records": [r.to_dict() for r in records]}, indent=1) + "\n",
        encoding="utf-8",
    )
    stats = {**info, **corpus_stats(records)}
    paths["corpus_stats"].write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    if png:
        paths["png"] = plot_tokens_png(records, out / "tokens.png", title=title)
        paths["corpus_stats_png"] = plot_corpus_stats(
            records, out / "corpus_stats.png", k_target=sae_info.get("k")
        )
    return paths
