"""The Markdown report (``results.md``), from a result dict or a saved ``results.json``.

Depends on nothing but the standard library: no numpy, torch, SAELens or plots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Digits value that marks a signed percentage column (L0 off target).
PCT = -1


def format_mean_std(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of an aggregated metric (a signed percentage with ``digits=PCT``)."""
    if not stat:
        return "-"
    if digits == PCT:
        return f"{stat['mean']:+.1f}% ± {stat['std']:.1f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt_seeds(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    if digits == PCT:
        return ", ".join(f"{v:+.1f}%" for v in stat["per_seed"])
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
    ("L0 off target", "l0_off_target_pct", PCT),
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
    ("L0 off target", "l0_off_target_pct", PCT),
    ("MCC", "mcc", 3),
    ("F1", "f1", 3),
    ("Spearman(k_hat, true)", "spearman_k_hat", 3),
    ("Spearman(L0, true)", "spearman_l0", 3),
)
# "Which SAE's L0 follows complexity": every SAE's per-input L0 at inference against the truth.
_TRACKING_COLUMNS = (
    ("Spearman(L0, true L0)", "spearman_l0", 3),
    ("mean L0", "mean_l0", 2),
    ("target", "target_l0", 2),
    ("L0 off target", "l0_off_target_pct", PCT),
    ("L0 sd over inputs", "l0_std", 2),
    ("MCC", "mcc", 3),
    ("EV", "explained_variance", 3),
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
        cells = [format_mean_std(a.get(key), digits) for _, key, digits in _MODE_COLUMNS]
        rows.append([labels.get(n, n), *cells, *within])
    header = ["SAE", *(h for h, _, _ in _MODE_COLUMNS)]
    return _table([*header, "Spearman within simple", "Spearman within complex"], rows)


def _bucket_range(row: dict[str, Any]) -> str:
    return f"{row['lo']}-{row['hi'] - 1}" if row["hi"] is not None else f"≥{row['lo']}"


def _calibration_table(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Mean L0 at inference (± its spread over the bucket's inputs) per true-L0 bucket."""
    names = list(agg)
    rows = []
    for i, row in enumerate(agg[names[0]]["buckets"]):
        cells = []
        for n in names:
            b = agg[n]["buckets"][i]
            spread = b.get("l0_spread")
            cells.append(f"{b['l0']:.1f}" + (f" ± {spread:.1f}" if spread is not None else ""))
        rows.append([_bucket_range(row), f"{row['true_l0']:.1f}", *cells])
    header = ["true L0", "true L0 mean", *(labels.get(n, n) for n in names)]
    return _table(header, rows)


def tracking_section(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The "which SAE's L0 follows complexity" table and the calibration table of a regime."""
    lines = [
        "Which SAE's L0 follows complexity: each SAE's per-input L0 at inference (what `encode` "
        "gives) against the input's true L0, mean ± std over seeds. *L0 off target* is the "
        "mean L0 against the L0 the SAE was set to reach, signed:",
        "",
    ]
    lines += _metric_table(agg, labels, _TRACKING_COLUMNS, format_mean_std)
    lines += [
        "",
        "Calibration: mean L0 at inference per true-L0 bucket (± the sd of the per-input L0 "
        "within the bucket), mean over seeds:",
        "",
    ]
    return lines + _calibration_table(agg, labels)


def _bucket_table(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    names = list(agg)
    rows = []
    for i, row in enumerate(agg[names[0]]["buckets"]):
        rng = _bucket_range(row)
        cells = []
        for n in names:
            b = agg[n]["buckets"][i]
            cell = f"{b['rel_err']:.3f} (L0 {b['l0']:.1f}"
            cell += f", k̂ {b['k_hat']:.1f})" if "k_hat" in b else ")"
            cells.append(cell)
        rows.append([rng, str(row["n"]), *cells])
    return _table(["true L0", "inputs (all seeds)", *(labels.get(n, n) for n in names)], rows)


_QUALITY_COLUMNS = (
    ("MCC", "mcc", 3),
    ("F1", "f1", 3),
    ("precision", "precision", 3),
    ("recall", "recall", 3),
    ("uniqueness", "uniqueness", 3),
    ("EV", "explained_variance", 3),
    ("mean L0", "mean_l0", 2),
    ("L0 off target", "l0_off_target_pct", PCT),
    ("dead", "dead_latents", 1),
    ("Spearman(k_hat, true)", "spearman_k_hat", 3),
    ("Spearman(k_hat, true within width)", "spearman_k_hat_width", 3),
)
# (column header, flattened hierarchy key) of the hierarchy table.
_HIERARCHY_COLUMNS = (
    ("learned, width", "groups.within_width.learned"),
    ("learned, beyond", "groups.beyond_width.learned"),
    ("F1 width", "groups.within_width.f1"),
    ("F1 roots", "groups.depth_0.f1"),
    ("F1 depth 1", "groups.depth_1.f1"),
    ("F1 depth 2", "groups.depth_2.f1"),
    ("F1 leaves", "groups.depth_3.f1"),
    ("F1 no tree", "groups.outside_hierarchy.f1"),
    ("parent recall alone", "absorption.parent_recall_alone"),
    ("parent recall w/ child", "absorption.parent_recall_with_child"),
    ("cos(child latent, parent)", "child_latent_cosine_with_parent"),
    ("split features", "features_split"),
)


def _hierarchy_table(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    rows = []
    for n, a in agg.items():
        h = a.get("hierarchy") or {}
        digits = [1 if key == "features_split" else 3 for _, key in _HIERARCHY_COLUMNS]
        cells = [
            format_mean_std(h.get(key), d)
            for (_, key), d in zip(_HIERARCHY_COLUMNS, digits, strict=True)
        ]
        rows.append([labels.get(n, n), *cells])
    return _table(["SAE", *(header for header, _ in _HIERARCHY_COLUMNS)], rows)


def _realistic_tables(agg: dict[str, Any], labels: dict[str, str]) -> list[str]:
    lines = ["", "Feature quality (SAELens's synthetic evals), mean ± std over seeds:", ""]
    lines += _metric_table(agg, labels, _QUALITY_COLUMNS, format_mean_std)
    lines += [
        "",
        "Where features go wrong. A true feature is *learned* when a decoder row has cosine >= "
        "0.5 with it; F1 is that latent's as a detector of the feature, by group: the d_sae most "
        "frequent features (*width*), the hierarchy's depths (roots 0 to leaves), features in no "
        "tree. *Parent recall* is a learned parent's latent firing when the parent is active "
        "without / with one of its children (lower with a child: absorption); *split features* "
        "are true features claimed by more than one latent:",
        "",
    ]
    return lines + _hierarchy_table(agg, labels)


def _regime_section(regime: dict[str, Any], agg: dict[str, Any], labels: dict[str, str]):
    dist = regime["true_l0_distribution"]
    q = dist["quantiles"]
    extra = ""
    if "simple_mean" in dist:
        extra = (
            f"; simple inputs {dist['simple_mean']:.2f}, complex {dist['complex_mean']:.2f} "
            f"({dist['complex_fraction']:.0%} complex)"
        )
    if "width_mean" in dist:
        extra = (
            f"; over the {regime['d_sae']} most frequent features (what the width can hold, "
            f"and the SAEs' k): {dist['width_mean']:.2f}"
        )
    lines = [
        f"## Regime `{regime['name']}`: {regime['description']}",
        "",
        f"True L0: mean {dist['mean']:.2f}, std {dist['std']:.2f}, min {dist['min']}, "
        f"max {dist['max']}; quantiles 1/10/50/90/99%: {q['0.01']:.0f}/{q['0.1']:.0f}/"
        f"{q['0.5']:.0f}/{q['0.9']:.0f}/{q['0.99']:.0f}{extra}.",
        "",
    ]
    lines += _metric_table(agg, labels, _MAIN_COLUMNS, format_mean_std)
    lines += ["", *tracking_section(agg, labels)]
    lines += ["", "Per seed:", ""]
    lines += _metric_table(agg, labels, _SEED_COLUMNS, _fmt_seeds)
    if any("l0_simple_mode" in a for a in agg.values()):
        lines += [
            "",
            "Simple vs complex inputs (mean over seeds); Spearman(k_hat, true L0) within each "
            "mode asks whether k_hat follows true L0 beyond telling the modes apart:",
            "",
        ]
        lines += _mode_table(agg, labels)
    if regime.get("kind") == "realistic":
        lines += _realistic_tables(agg, labels)
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
    r = result.get("realistic_settings")
    if r:
        lines += [
            f"Realistic regimes (SAELens's SyntheticSAERunner): seeds {r['seeds']}; "
            f"{r['training_samples']:,} training samples, batch {r['batch_size']} "
            f"({r['total_steps']} steps), lr {r['lr']:g}, dead-latent window "
            f"{r['dead_feature_window']} steps; evaluation on {r['n_eval']:,} fresh inputs per seed.",
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
