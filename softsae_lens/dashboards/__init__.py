"""Per-latent dashboards of any SAELens SAE, and their export in Neuronpedia's upload format.

For each chosen latent: its top activating contexts (token windows shaded by activation, with
``k_hat`` beside them for a SoftSAE), contexts sampled from lower activation intervals, its
density and a histogram of its nonzero activations, the logit effect of its decoder direction
(``W_dec[i]`` times the final norm's scale, through ``W_U``) and, for a SoftSAE, the mean
``k_hat`` where it fires against the overall mean. An index page lists every latent (sortable,
searchable, dead and dense ones summarised). Text streams through the model once; per-latent
state is fixed-size (top-k heaps, a reservoir, log-binned histograms).

Modules, each importing only those above it:

- :mod:`~softsae_lens.dashboards.config`: :class:`DashboardsConfig` (the CLI's flags).
- :mod:`~softsae_lens.dashboards.collect`: :class:`LatentCollector`, the streaming state.
- :mod:`~softsae_lens.dashboards.stream`: :func:`token_rows`, :func:`encode_batch`, :func:`stream`.
- :mod:`~softsae_lens.dashboards.latents`: :func:`logit_effects`, :func:`select_latents`,
  :func:`latent_data` (one latent's dict).
- :mod:`~softsae_lens.dashboards.build`: :func:`build_dashboards` (all of the above).
- :mod:`~softsae_lens.dashboards.render`: the pages (jinja2 templates in ``templates/``).
- :mod:`~softsae_lens.dashboards.neuronpedia`: the Neuronpedia batches.
- :mod:`~softsae_lens.dashboards.write`: :func:`write_dashboards`, all files at once.
- ``python -m softsae_lens.dashboards`` (:mod:`~softsae_lens.dashboards.__main__`): the CLI and
  :func:`run`, which loads the SAE and the model as ``python -m softsae_lens.analyze`` does.
"""

from softsae_lens.dashboards.build import Dashboards, build_dashboards
from softsae_lens.dashboards.collect import LatentCollector
from softsae_lens.dashboards.config import DashboardsConfig, parse_latents
from softsae_lens.dashboards.latents import (
    final_norm_scale,
    latent_data,
    logit_effects,
    select_latents,
)
from softsae_lens.dashboards.neuronpedia import neuronpedia_batches, write_neuronpedia
from softsae_lens.dashboards.render import latent_page_name, render_index, render_latent
from softsae_lens.dashboards.stream import encode_batch, stream, token_rows
from softsae_lens.dashboards.write import write_dashboards

__all__ = [
    "Dashboards",
    "DashboardsConfig",
    "LatentCollector",
    "build_dashboards",
    "encode_batch",
    "final_norm_scale",
    "latent_data",
    "latent_page_name",
    "logit_effects",
    "neuronpedia_batches",
    "parse_latents",
    "render_index",
    "render_latent",
    "select_latents",
    "stream",
    "token_rows",
    "write_dashboards",
    "write_neuronpedia",
]
