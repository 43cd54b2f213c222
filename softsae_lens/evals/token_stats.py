"""Per-token statistics on held-out text: a SoftSAE's k_hat, any SAE's L0, and their Spearman
correlations with the token's surprisal and the next-token loss."""

from __future__ import annotations

import math
from typing import Any

import torch

from softsae_lens.evals.lm import EvalBudget

__all__ = ["fmt_rho", "soft_k_statistics", "token_l0_statistics"]


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
    from softsae_lens.models.bridge import special_token_ids

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
