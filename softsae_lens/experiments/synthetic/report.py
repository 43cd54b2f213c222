"""Aggregation over seeds, the acceptance checks and the Markdown report.

Everything here reads and writes plain JSON-able dicts (the per-seed metrics of
:mod:`.metrics`, the result of :func:`.runner.run_experiment`), so a saved ``results.json`` can
be re-reported without training.

Depends on numpy only: nothing about torch, SAELens, training or plots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

_SCALAR_KEYS = (
    "explained_variance",
    "mse",
    "rel_err",
    "mean_l0",
    "l0_std",
    "mcc",
    "f1",
    "dead_latents",
    "k_hat_mean",
    "l0_simple_mode",
    "l0_complex_mode",
    "rel_err_simple_mode",
    "rel_err_complex_mode",
)
_CORRELATION_KEYS = ("spearman_k_hat", "pearson_k_hat", "spearman_l0", "pearson_l0")
_BUCKET_KEYS = ("true_l0", "mse", "rel_err", "l0", "k_hat")


class _SeedMetrics(Protocol):
    metrics: dict[str, dict[str, Any]]


def _get(m: dict[str, Any], key: str) -> float | None:
    if key in ("spearman_k_hat", "pearson_k_hat"):
        return (m.get("corr_k_hat_vs_true") or {}).get(key.split("_")[0])
    if key in ("spearman_l0", "pearson_l0"):
        return (m.get("corr_l0_vs_true") or {}).get(key.split("_")[0])
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
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


def aggregate(runs: Sequence[_SeedMetrics]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every scalar metric and every bucket, per SAE."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0].metrics:
        entry: dict[str, Any] = {}
        for key in (*_SCALAR_KEYS, *_CORRELATION_KEYS):
            vals = [v for r in runs if (v := _get(r.metrics[name], key)) is not None]
            if vals:
                entry[key] = _mean_std(vals)
        within = [r.metrics[name].get("spearman_k_hat_within_mode") for r in runs]
        if all(w is not None for w in within):
            entry["spearman_k_hat_within_mode"] = {
                mode: float(np.mean([w[mode] for w in within if w[mode] is not None]))
                for mode in ("simple", "complex")
            }
        entry["buckets"] = _aggregate_buckets(runs, name)
        out[name] = entry
    return out


def _ev_at_l0(l0: float, l0_a: float, ev_a: float, l0_b: float, ev_b: float) -> float:
    """EV at ``l0``, linear in L0 through two (L0, EV) points (the second where they coincide)."""
    return ev_a + (ev_b - ev_a) * (l0 - l0_a) / (l0_b - l0_a) if l0_b != l0_a else ev_b


def acceptance(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's acceptance checks on the mean over seeds (None without "soft" and "topk").

    Also records every SAE's measured mean L0 and, where present, SoftSAE's EV against
    TopK with k + 1 (whose L0 is at or above SoftSAE's), as information.
    """
    checks: dict[str, Any] = {}
    for regime, agg in summary.items():
        soft, topk = agg.get("soft"), agg.get("topk")
        if soft is None or topk is None:
            continue
        rho = soft["spearman_k_hat"]["mean"]
        ev_s, ev_t = soft["explained_variance"]["mean"], topk["explained_variance"]["mean"]
        mcc_s, mcc_t = soft["mcc"]["mean"], topk["mcc"]["mean"]
        checks[regime] = {
            "spearman_k_hat_ge_0.9": {"value": rho, "pass": rho >= 0.9},
            "ev_soft_ge_topk": {"soft": ev_s, "topk": ev_t, "pass": ev_s >= ev_t},
            "mcc_soft_ge_topk_minus_0.02": {
                "soft": mcc_s,
                "topk": mcc_t,
                "pass": mcc_s >= mcc_t - 0.02,
            },
            "mean_l0": {name: a["mean_l0"]["mean"] for name, a in agg.items()},
        }
        plus1 = agg.get("topk_plus1")
        if plus1 is not None:
            l0_s, l0_t = soft["mean_l0"]["mean"], topk["mean_l0"]["mean"]
            l0_p, ev_p = plus1["mean_l0"]["mean"], plus1["explained_variance"]["mean"]
            checks[regime]["info_soft_vs_topk_plus1"] = {
                "ev_soft": ev_s,
                "ev_topk_plus1": ev_p,
                "l0_soft": l0_s,
                "l0_topk_plus1": l0_p,
                "ev_topk_interpolated_at_l0_soft": _ev_at_l0(l0_s, l0_t, ev_t, l0_p, ev_p),
            }
    if not checks:
        return None
    checks["all_pass"] = all(
        c["pass"] for r in checks.values() if isinstance(r, dict) for c in r.values() if "pass" in c
    )
    return checks


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt_seeds(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return ", ".join(f"{v:.{digits}f}" for v in stat["per_seed"])


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table: header row, separator, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# (column header, metric key, digits) of the main and the per-seed tables.
_MAIN_COLUMNS = (
    ("EV", "explained_variance", 3),
    ("MSE", "mse", 5),
    ("rel. err", "rel_err", 3),
    ("mean L0", "mean_l0", 2),
    ("L0 std", "l0_std", 2),
    ("MCC", "mcc", 3),
    ("F1", "f1", 3),
    ("dead", "dead_latents", 1),
    ("Spearman(k_hat, true)", "spearman_k_hat", 3),
    ("Pearson(k_hat, true)", "pearson_k_hat", 3),
    ("Spearman(L0, true)", "spearman_l0", 3),
    ("Pearson(L0, true)", "pearson_l0", 3),
)
_SEED_COLUMNS = (
    ("EV", "explained_variance", 3),
    ("mean L0", "mean_l0", 2),
    ("MCC", "mcc", 3),
    ("F1", "f1", 3),
    ("Spearman(k_hat, true)", "spearman_k_hat", 3),
)
_MODE_COLUMNS = (
    ("L0 simple", "l0_simple_mode", 2),
    ("L0 complex", "l0_complex_mode", 2),
    ("rel. err simple", "rel_err_simple_mode", 3),
    ("rel. err complex", "rel_err_complex_mode", 3),
)


def _metric_table(
    agg: dict[str, Any], labels: dict[str, str], columns: Sequence[tuple[str, str, int]], fmt
) -> list[str]:
    """One row per SAE, one column per ``(header, key, digits)``, cells formatted by ``fmt``."""
    rows = [
        [labels.get(n, n), *(fmt(a.get(key), digits) for _, key, digits in columns)]
        for n, a in agg.items()
    ]
    return _table(["SAE", *(header for header, _, _ in columns)], rows)


def _mode_table(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    rows = []
    for n, a in agg.items():
        w = a.get("spearman_k_hat_within_mode") or {}
        within = [f"{w[m]:.3f}" if w.get(m) is not None else "-" for m in ("simple", "complex")]
        cells = [_fmt(a.get(key), digits) for _, key, digits in _MODE_COLUMNS]
        rows.append([labels.get(n, n), *cells, *within])
    header = ["SAE", *(h for h, _, _ in _MODE_COLUMNS)]
    return _table([*header, "Spearman within simple", "Spearman within complex"], rows)


def _bucket_table(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    names = list(agg)
    rows = []
    for i, row in enumerate(agg[names[0]]["buckets"]):
        rng = f"{row['lo']}-{row['hi'] - 1}" if row["hi"] is not None else f"≥{row['lo']}"
        cells = []
        for n in names:
            b = agg[n]["buckets"][i]
            cell = f"{b['rel_err']:.3f} (L0 {b['l0']:.1f}"
            cell += f", k̂ {b['k_hat']:.1f})" if "k_hat" in b else ")"
            cells.append(cell)
        rows.append([rng, str(row["n"]), *cells])
    return _table(["true L0", "inputs (all seeds)", *(labels.get(n, n) for n in names)], rows)


def _regime_section(regime: dict[str, Any], agg: dict[str, Any], labels: dict[str, str]):
    dist = regime["true_l0_distribution"]
    q = dist["quantiles"]
    extra = ""
    if "simple_mean" in dist:
        extra = (
            f"; simple inputs {dist['simple_mean']:.2f}, complex {dist['complex_mean']:.2f} "
            f"({dist['complex_fraction']:.0%} complex)"
        )
    lines = [
        f"## Regime `{regime['name']}`: {regime['description']}",
        "",
        f"True L0: mean {dist['mean']:.2f}, std {dist['std']:.2f}, min {dist['min']}, "
        f"max {dist['max']}; quantiles 1/10/50/90/99%: {q['0.01']:.0f}/{q['0.1']:.0f}/"
        f"{q['0.5']:.0f}/{q['0.9']:.0f}/{q['0.99']:.0f}{extra}.",
        "",
    ]
    lines += _metric_table(agg, labels, _MAIN_COLUMNS, _fmt)
    lines += ["", "Per seed (EV / mean L0 / MCC / Spearman(k_hat)):", ""]
    lines += _metric_table(agg, labels, _SEED_COLUMNS, _fmt_seeds)
    if any("l0_simple_mode" in a for a in agg.values()):
        lines += [
            "",
            "Simple vs complex inputs (mean over seeds); Spearman(k_hat, true L0) within each "
            "mode asks whether k_hat follows true L0 beyond telling the modes apart:",
            "",
        ]
        lines += _mode_table(agg, labels)
    lines += [
        "",
        "Relative reconstruction error (and mean L0) per true-L0 bucket, mean over seeds:",
        "",
    ]
    return [*lines, *_bucket_table(agg, labels), ""]


def markdown_report(result: dict[str, Any]) -> str:
    """The whole ``results.md`` from a result dict (also from a saved ``results.json``)."""
    s = result["settings"]
    lines = [
        f"# {result['title']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Seeds {s['seeds']}; {s['training_samples']:,} training samples, batch {s['batch_size']} "
        f"({s['total_steps']} steps), lr {s['lr']:g} (decay over the last {s['lr_decay_steps']} "
        f"steps); evaluation on {s['n_eval']:,} fresh inputs per seed. Wall time {result['wall_s']:.0f} s.",
        "",
    ]
    for regime in result["regimes"]:
        lines += _regime_section(regime, result["summary"][regime["name"]], result["labels"])
    acc = result.get("acceptance")
    if acc:
        lines += ["## Acceptance (mean over seeds)", ""]
        for regime, checks in acc.items():
            if not isinstance(checks, dict):
                continue
            for check, c in checks.items():
                vals = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k != "pass")
                verdict = f": **{'pass' if c['pass'] else 'FAIL'}**" if "pass" in c else ""
                lines.append(f"- {regime} / {check}: {vals}{verdict}")
        lines += ["", f"All pass: **{acc['all_pass']}**", ""]
    return "\n".join(lines)
