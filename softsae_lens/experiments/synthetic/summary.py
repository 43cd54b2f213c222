"""Aggregation over seeds and the acceptance checks.

Reads and writes plain JSON-able dicts (the per-seed metrics of :mod:`.metrics`), so a saved
``results.json`` can be re-summarised without training.

Depends on numpy only: nothing about torch, SAELens, training, Markdown or plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

_SCALAR_KEYS = (
    "explained_variance",
    "mse",
    "rel_err",
    "mean_l0",
    "target_l0",
    "l0_off_target_pct",
    "l0_std",
    "mcc",
    "f1",
    "dead_latents",
    "k_hat_mean",
    "l0_simple_mode",
    "l0_complex_mode",
    "rel_err_simple_mode",
    "rel_err_complex_mode",
    "precision",
    "recall",
    "uniqueness",
    "shrinkage",
)
_CORRELATION_KEYS = (
    "spearman_k_hat",
    "pearson_k_hat",
    "spearman_l0",
    "pearson_l0",
    "spearman_k_hat_width",
)
_BUCKET_KEYS = ("true_l0", "mse", "rel_err", "l0", "l0_spread", "k_hat")


class _SeedMetrics(Protocol):
    metrics: dict[str, dict[str, Any]]


def _get(m: dict[str, Any], key: str) -> float | None:
    if key in ("spearman_k_hat", "pearson_k_hat"):
        return (m.get("corr_k_hat_vs_true") or {}).get(key.split("_")[0])
    if key in ("spearman_l0", "pearson_l0"):
        return (m.get("corr_l0_vs_true") or {}).get(key.split("_")[0])
    if key == "spearman_k_hat_width":  # realistic regime: true L0 of the features the width holds
        return (m.get("corr_k_hat_vs_width_l0") or {}).get("spearman")
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": list(values)}


def _aggregate_buckets(runs: Sequence[_SeedMetrics], name: str) -> list[dict[str, Any]]:
    """Seed mean and std of every bucket (every seed of a regime uses the same edges)."""
    out = []
    for row in runs[0].metrics[name]["buckets"]:
        rows = [
            b
            for r in runs
            for b in r.metrics[name]["buckets"]
            if b["lo"] == row["lo"] and b["hi"] == row["hi"]
        ]
        agg: dict[str, Any] = {"lo": row["lo"], "hi": row["hi"], "n": sum(b["n"] for b in rows)}
        for key in _BUCKET_KEYS:
            if key in row:
                vals = [b[key] for b in rows]
                agg[key] = float(np.mean(vals))
                agg[f"{key}_std"] = float(np.std(vals))
        out.append(agg)
    return out


def flatten_hierarchy(m: dict[str, Any]) -> dict[str, float]:
    """The scalar hierarchy diagnostics of one run, under dotted names (``groups.depth_0.f1``)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        elif isinstance(value, (int, float)):
            out[prefix] = float(value)

    walk("", m.get("hierarchy") or {})
    return out


def _aggregate_hierarchy(runs: Sequence[_SeedMetrics], name: str) -> dict[str, Any]:
    flat = [flatten_hierarchy(r.metrics[name]) for r in runs]
    keys = dict.fromkeys(k for f in flat for k in f)
    return {k: mean_std([f[k] for f in flat if k in f]) for k in keys}


def aggregate(runs: Sequence[_SeedMetrics]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every scalar metric, every bucket and (realistic regimes)
    every hierarchy diagnostic, per SAE."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0].metrics:
        entry: dict[str, Any] = {}
        for key in (*_SCALAR_KEYS, *_CORRELATION_KEYS):
            vals = [v for r in runs if (v := _get(r.metrics[name], key)) is not None]
            if vals:
                entry[key] = mean_std(vals)
        within = [r.metrics[name].get("spearman_k_hat_within_mode") for r in runs]
        if all(w is not None for w in within):
            entry["spearman_k_hat_within_mode"] = {
                mode: float(np.mean([w[mode] for w in within if w[mode] is not None]))
                for mode in ("simple", "complex")
            }
        entry["buckets"] = _aggregate_buckets(runs, name)
        if any("hierarchy" in r.metrics[name] for r in runs):
            entry["hierarchy"] = _aggregate_hierarchy(runs, name)
        out[name] = entry
    return out


def _ev_at_l0(l0: float, l0_a: float, ev_a: float, l0_b: float, ev_b: float) -> float:
    """EV at ``l0``, linear in L0 through two (L0, EV) points (the second where they coincide)."""
    return ev_a + (ev_b - ev_a) * (l0 - l0_a) / (l0_b - l0_a) if l0_b != l0_a else ev_b


def _interpolated_topk_ev(agg: dict[str, Any]) -> dict[str, float] | None:
    """TopK's EV at SoftSAE's mean L0, linear in L0 through TopK (k) and TopK (k+1)."""
    soft, topk, plus1 = agg.get("soft"), agg.get("topk"), agg.get("topk_plus1")
    if soft is None or topk is None or plus1 is None:
        return None
    l0_s, l0_t = soft["mean_l0"]["mean"], topk["mean_l0"]["mean"]
    l0_p, ev_p = plus1["mean_l0"]["mean"], plus1["explained_variance"]["mean"]
    ev_t = topk["explained_variance"]["mean"]
    return {
        "ev_soft": soft["explained_variance"]["mean"],
        "ev_topk_plus1": ev_p,
        "l0_soft": l0_s,
        "l0_topk_plus1": l0_p,
        "ev_topk_interpolated_at_l0_soft": _ev_at_l0(l0_s, l0_t, ev_t, l0_p, ev_p),
    }


def _toy_checks(soft: dict[str, Any], topk: dict[str, Any]) -> dict[str, Any]:
    rho = soft["spearman_k_hat"]["mean"]
    ev_s, ev_t = soft["explained_variance"]["mean"], topk["explained_variance"]["mean"]
    mcc_s, mcc_t = soft["mcc"]["mean"], topk["mcc"]["mean"]
    return {
        "spearman_k_hat_ge_0.9": {"value": rho, "pass": rho >= 0.9},
        "ev_soft_ge_topk": {"soft": ev_s, "topk": ev_t, "pass": ev_s >= ev_t},
        "mcc_soft_ge_topk_minus_0.02": {
            "soft": mcc_s,
            "topk": mcc_t,
            "pass": mcc_s >= mcc_t - 0.02,
        },
    }


def _realistic_checks(agg: dict[str, Any]) -> dict[str, Any]:
    """Feature quality at least TopK's, EV at least TopK's at SoftSAE's L0, k_hat tracking."""
    soft, topk = agg["soft"], agg["topk"]
    rho = soft["spearman_k_hat"]["mean"]
    checks: dict[str, Any] = {"spearman_k_hat_ge_0.85": {"value": rho, "pass": rho >= 0.85}}
    for key in ("mcc", "f1"):
        s, t = soft[key]["mean"], topk[key]["mean"]
        checks[f"{key}_soft_ge_topk"] = {"soft": s, "topk": t, "pass": s >= t}
    at_l0 = _interpolated_topk_ev(agg)
    ev_s = soft["explained_variance"]["mean"]
    ev_t = at_l0["ev_topk_interpolated_at_l0_soft"] if at_l0 else topk["explained_variance"]["mean"]
    checks["ev_soft_ge_topk_at_same_l0"] = {"soft": ev_s, "topk": ev_t, "pass": ev_s >= ev_t}
    return checks


def acceptance(
    summary: dict[str, dict[str, Any]], kinds: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The issues' acceptance checks on the mean over seeds (None without "soft" and "topk").

    Toy regimes: Spearman(k_hat, true L0) >= 0.9, EV >= TopK's, MCC >= TopK's - 0.02.
    Realistic regimes (``kinds[regime] == "realistic"``): Spearman >= 0.85, MCC and F1 >=
    TopK's, EV >= TopK's interpolated at SoftSAE's mean L0. Also records every SAE's mean L0,
    every SAE's Spearman(L0, true L0) and, where TopK (k+1) ran, SoftSAE's EV against TopK's at
    the same L0, as information.
    """
    checks: dict[str, Any] = {}
    for regime, agg in summary.items():
        soft, topk = agg.get("soft"), agg.get("topk")
        if soft is None or topk is None:
            continue
        if (kinds or {}).get(regime) == "realistic":
            checks[regime] = _realistic_checks(agg)
        else:
            checks[regime] = _toy_checks(soft, topk)
        checks[regime]["mean_l0"] = {name: a["mean_l0"]["mean"] for name, a in agg.items()}
        # Information, not a check: every SAE's Spearman(L0 at inference, true L0), SoftSAE's
        # included (TopK's L0 is constant: no rank correlation).
        checks[regime]["info_spearman_l0_vs_true_l0"] = {
            name: a["spearman_l0"]["mean"] for name, a in agg.items() if "spearman_l0" in a
        }
        at_l0 = _interpolated_topk_ev(agg)
        if at_l0 is not None:
            checks[regime]["info_soft_vs_topk_plus1"] = at_l0
    if not checks:
        return None
    checks["all_pass"] = all(
        c["pass"] for r in checks.values() if isinstance(r, dict) for c in r.values() if "pass" in c
    )
    return checks
