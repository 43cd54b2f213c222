"""Per-token k of a SoftSAE in TransformerLens: read it, look at it, intervene on it.

A SoftSAE predicts for every token how many latents it needs (``k_hat``), a signal no fixed-k
SAE has. This package reads that signal through the SAE's ``hook_sae_k`` HookPoint while the SAE
is spliced into a model, and works the same on SAELens's ``HookedSAETransformer`` and
``SAETransformerBridge``. Every splice restores the model fully on exit (hooks included), and by
default leaves special tokens (BOS, EOS, PAD, SEP) alone and out of every statistic, as
``sae_lens.evals.run_evals`` does (``exclude_special_tokens=False`` to include them).

Modules, each importing only those above it:

- :mod:`~softsae_lens.analysis.splice`: attach the SAE for a block and restore the model;
  texts to token batches (:func:`spliced_sae`, :func:`sae_hook_name`, :func:`to_token_batches`).
- :mod:`~softsae_lens.analysis.records`: :class:`TokenRecord` and :func:`token_k_report`
  (token string, position, ``k_hat``, integer k, L0, reconstruction error, top latents, losses).
- :mod:`~softsae_lens.analysis.interventions`: :func:`with_k_override` (a fixed, scaled or
  capped k inside a block) and :func:`loss_with_k_override` (loss clean, spliced, overridden).
- :mod:`~softsae_lens.analysis.stats`: :func:`quantile_summary`, :func:`k_stats_by_class`,
  :func:`k_loss_spearman` (scipy) and :func:`corpus_stats`.
- :mod:`~softsae_lens.analysis.colors`: the k_hat colour scale (a matplotlib colormap).
- :mod:`~softsae_lens.analysis.render`: :func:`render_html`, a self-contained page from jinja2
  templates (``templates/``).
- :mod:`~softsae_lens.analysis.plots`: :func:`plot_tokens_png`, :func:`plot_corpus_stats`.
- :mod:`~softsae_lens.analysis.write`: :func:`write_analysis` (all files at once).
"""

from softsae_lens.analysis.colors import K_COLORS
from softsae_lens.analysis.interventions import (
    KOverrideLoss,
    k_override_fn,
    loss_with_k_override,
    with_k_override,
)
from softsae_lens.analysis.plots import plot_corpus_stats, plot_tokens_png
from softsae_lens.analysis.records import (
    TOKEN_CLASSES,
    TokenRecord,
    classify_token,
    sae_info,
    token_k_report,
)
from softsae_lens.analysis.render import render_html
from softsae_lens.analysis.splice import sae_hook_name, spliced_sae, to_token_batches
from softsae_lens.analysis.stats import (
    QUANTILE_KEYS,
    corpus_stats,
    k_loss_spearman,
    k_stats_by_class,
    quantile_summary,
)
from softsae_lens.analysis.write import write_analysis

__all__ = [
    "K_COLORS",
    "QUANTILE_KEYS",
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
    "quantile_summary",
    "render_html",
    "sae_hook_name",
    "sae_info",
    "spliced_sae",
    "to_token_batches",
    "token_k_report",
    "with_k_override",
    "write_analysis",
]
