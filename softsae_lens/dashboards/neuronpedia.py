"""The dashboards in Neuronpedia's upload format: the ``batch-<n>.json`` files SAEDashboard's
``NeuronpediaRunner`` writes, plus its ``skipped_indexes.json``.

Field names and types follow SAEDashboard's ``NeuronpediaDashboardBatch`` /
``NeuronpediaDashboardFeature`` / ``NeuronpediaDashboardActivation`` (``to_dict``): a batch holds
``model_id`` (str), ``layer`` (int), ``sae_set`` (str), ``sae_id_suffix`` (str or null) and
``features``; a feature holds the logit tables (``pos_str``/``pos_values``,
``neg_str``/``neg_values``), ``frac_nonzero``, the activation and logit histograms
(``*_bar_values`` are bin centres, ``*_bar_heights`` integer counts), ``n_prompts_total``,
``n_tokens_in_prompt``, ``dataset``, ``activations`` and the neuron-alignment and correlation
tables. Each activation is one context: ``tokens`` (str), ``values`` (float),
``qualifying_token_index`` (int), and the bin it was drawn from: ``bin_min=-1``,
``bin_max=<max activation>``, ``bin_contains=-1`` for the top group (as SAEDashboard parses its
"TOP ACTIVATIONS" title), else the interval's bounds and the fraction of tokens in it. Floats are
rounded to 5 decimals, as SAEDashboard does. Correlated neurons and features are not computed
(empty lists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["neuronpedia_batches", "neuronpedia_feature", "write_neuronpedia"]


def _r(values: list[float]) -> list[float]:
    return [round(float(v), 5) for v in values]


def _activation(ctx: dict[str, Any], bin_min: float, bin_max: float, contains: float) -> dict:
    return {
        "bin_min": float(bin_min),
        "bin_max": float(bin_max),
        "bin_contains": float(contains),
        "tokens": [str(t) for t in ctx["tokens"]],
        "values": _r(ctx["acts"]),
        "qualifying_token_index": int(ctx["index"]),
    }


def neuronpedia_feature(
    latent: dict[str, Any], *, n_prompts_total: int, n_tokens_in_prompt: int, dataset: str
) -> dict[str, Any]:
    """One ``NeuronpediaDashboardFeature.to_dict()`` from a latent's dashboard dict."""
    logits = latent.get("logits") or {}
    acts = [_activation(c, -1, round(latent["max"], 3), -1) for c in latent["top"]]
    for group in latent["intervals"]:
        for ctx in group["examples"]:
            acts.append(_activation(ctx, group["lo"], group["hi"], group["contains"]))
    align = latent.get("neuron_alignment") or {"indices": [], "values": [], "l1": []}
    lhist = logits.get("hist") or {"centres": [], "counts": []}
    return {
        "feature_index": int(latent["index"]),
        "neuron_alignment_indices": [int(i) for i in align["indices"]],
        "neuron_alignment_values": _r(align["values"]),
        "neuron_alignment_l1": _r(align["l1"]),
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": [str(t) for t, _ in logits.get("neg", [])],
        "neg_values": _r([v for _, v in logits.get("neg", [])]),
        "pos_str": [str(t) for t, _ in logits.get("pos", [])],
        "pos_values": _r([v for _, v in logits.get("pos", [])]),
        "frac_nonzero": float(latent["density"]),
        "freq_hist_data_bar_values": _r(latent["hist"]["centres"]),
        "freq_hist_data_bar_heights": [int(c) for c in latent["hist"]["counts"]],
        "logits_hist_data_bar_heights": [int(c) for c in lhist["counts"]],
        "logits_hist_data_bar_values": _r(lhist["centres"]),
        "n_prompts_total": int(n_prompts_total),
        "n_tokens_in_prompt": int(n_tokens_in_prompt),
        "dataset": str(dataset),
        "decoder_weights_dist": [],
        "activations": acts,
        "vector": [],
    }


def neuronpedia_batches(
    latents: list[dict[str, Any]],
    info: dict[str, Any],
    *,
    model_id: str,
    sae_set: str,
    sae_id_suffix: str | None = None,
    features_per_batch: int = 128,
) -> list[dict[str, Any]]:
    """The batches (``NeuronpediaDashboardBatch.to_dict()``), ``features_per_batch`` each."""
    common = {
        "n_prompts_total": info["n_rows"],
        "n_tokens_in_prompt": info["context_size"],
        "dataset": info.get("dataset", ""),
    }
    features = [neuronpedia_feature(lat, **common) for lat in latents]
    return [
        {
            "model_id": model_id,
            "layer": int(info["layer"] if info.get("layer") is not None else 0),
            "sae_set": sae_set,
            "sae_id_suffix": sae_id_suffix,
            "features": features[start : start + features_per_batch],
        }
        for start in range(0, max(len(features), 1), features_per_batch)
    ]


def write_neuronpedia(
    folder: Path, latents: list[dict[str, Any]], info: dict[str, Any], **kwargs: Any
) -> list[Path]:
    """Write ``batch-<n>.json`` and ``skipped_indexes.json`` (the latents without a dashboard)
    into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    batches = neuronpedia_batches(latents, info, **kwargs)
    for n, batch in enumerate(batches):
        path = folder / f"batch-{n}.json"
        path.write_text(json.dumps(batch), encoding="utf-8")
        paths.append(path)
    done = {lat["index"] for lat in latents}
    skipped = {
        "model_id": kwargs["model_id"],
        "layer": str(batches[0]["layer"]),
        "sae_set": kwargs["sae_set"],
        "log_sparsity": None,
        "skipped_indexes": [i for i in range(int(info["d_sae"])) if i not in done],
    }
    path = folder / "skipped_indexes.json"
    path.write_text(json.dumps(skipped), encoding="utf-8")
    paths.append(path)
    return paths
