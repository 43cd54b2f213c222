"""results.json, results.md and plot.png from the run's results dict (no SAEBench import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softsae_lens.experiments.tables import markdown_table

__all__ = ["frontier_rows", "summary_rows", "write_outputs"]

ABSORPTION_CAVEAT = (
    "Absorption (first-letter spelling) is weak below ~1B parameters and 16k latents, as "
    "SAEBench's README warns: read it as a smoke signal here, not a ranking."
)
COLUMNS = [
    ("L0", "core", "sparsity/l0"),
    ("EV", "core", "reconstruction_quality/explained_variance"),
    ("MSE", "core", "reconstruction_quality/mse"),
    ("cos", "core", "reconstruction_quality/cossim"),
    ("CE score", "core", "model_performance_preservation/ce_loss_score"),
    ("KL score", "core", "model_behavior_preservation/kl_div_score"),
    ("absorption", "absorption", "mean_absorption_fraction_score"),
    ("full abs.", "absorption", "mean_full_absorption_score"),
    ("meta EV", "meta_structure", "decoder_fraction_variance_explained"),
]


def _get(entry: dict[str, Any], eval_name: str, key: str) -> Any:
    return entry.get("evals", {}).get(eval_name, {}).get("metrics", {}).get(key)


def _probe_keys(results: dict[str, Any]) -> list[str]:
    keys: set[str] = set()
    for entry in results["saes"].values():
        m = entry.get("evals", {}).get("sparse_probing_sae_probes", {}).get("metrics", {})
        keys |= {k for k in m if k.startswith("mean/")}
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per SAE: architecture, target L0 and every headline number."""
    rows = []
    probe_keys = _probe_keys(results)
    for name, entry in sorted(
        results["saes"].items(), key=lambda kv: (kv[1].get("target_l0") or 0, kv[0])
    ):
        row: dict[str, Any] = {
            "sae": name,
            "arch": entry["architecture"],
            "target": entry["target_l0"],
        }
        for label, eval_name, key in COLUMNS:
            row[label] = _get(entry, eval_name, key)
        for key in probe_keys:
            row[f"probe k={key.split('_')[1]}"] = _get(entry, "sparse_probing_sae_probes", key)
        kh = entry.get("k_hat")
        if kh:
            q = kh["k_hat"]
            row["k_hat mean/std"] = f"{q['mean']:.1f} / {q['std']:.1f}"
            row["k_hat min-max"] = f"{q['min']:.1f}-{q['max']:.1f}"
        rows.append(row)
    return rows


# metrics compared at matched L0, and whether higher is better
FRONTIER_METRICS = [
    ("EV", True),
    ("CE score", True),
    ("KL score", True),
    ("meta EV", False),
    ("absorption", False),
]


def frontier_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every SoftSAE against each other architecture interpolated to SoftSAE's L0 (linear in
    log L0 between that architecture's own SAEs, as the sweep's matched-L0 rows; None where
    SoftSAE's L0 lies outside their range), per metric: ``better`` says whether SoftSAE is on
    or above that architecture's frontier (``higher`` says which way is better)."""
    from softsae_lens.experiments.sweep.report import interpolate_at_l0

    rows = summary_rows(results)
    probe = [(k, True) for k in (rows[0] if rows else {}) if k.startswith("probe k=")]
    out = []
    for soft in (r for r in rows if r["arch"] == "soft" and r["L0"] is not None):
        for arch in sorted({r["arch"] for r in rows} - {"soft"}):
            for metric, higher in FRONTIER_METRICS[:3] + probe + FRONTIER_METRICS[3:]:
                if soft.get(metric) is None:
                    continue
                other = interpolate_at_l0(
                    [(r["L0"], r.get(metric)) for r in rows if r["arch"] == arch], soft["L0"]
                )
                diff = None if other is None else soft[metric] - other
                out.append(
                    {
                        "sae": soft["sae"],
                        "l0": soft["L0"],
                        "against": arch,
                        "metric": metric,
                        "higher": higher,
                        "soft": soft[metric],
                        "other": other,
                        "difference": diff,
                        "better": None if diff is None else (diff >= 0) == higher,
                    }
                )
    return out


def _frontier_markdown(results: dict[str, Any]) -> list[str]:
    rows = frontier_rows(results)
    if not rows:
        return []
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    lines = [
        "",
        "## SoftSAE against each architecture at matched L0",
        "",
        "SoftSAE minus the other architecture interpolated to SoftSAE's L0 (linear in log L0 "
        "between its SAEs; `-` where SoftSAE's L0 is outside their range). "
        + ", ".join(
            f"{m}: {'higher' if h else 'lower'} is better"
            for m, h in dict((r["metric"], r["higher"]) for r in rows).items()
        )
        + ".",
        "",
    ]
    table = []
    for sae in dict.fromkeys(r["sae"] for r in rows):
        for arch in dict.fromkeys(r["against"] for r in rows if r["sae"] == sae):
            cells = {r["metric"]: r for r in rows if r["sae"] == sae and r["against"] == arch}
            l0 = next(iter(cells.values()))["l0"]
            table.append(
                [sae, f"{l0:.1f}", arch]
                + [
                    "-"
                    if cells.get(m) is None or cells[m]["difference"] is None
                    else f"{cells[m]['difference']:+.4f}"
                    for m in metrics
                ]
            )
    lines += markdown_table(["SoftSAE", "its L0", "against", *metrics], table)
    compared = [r for r in rows if r["better"] is not None]
    ahead = [r for r in compared if r["better"]]
    lines += [
        "",
        f"SoftSAE is on or above the other architecture's frontier in {len(ahead)} of "
        f"{len(compared)} comparisons where its L0 falls inside that architecture's range.",
    ]
    for metric in metrics:
        m = [r for r in compared if r["metric"] == metric]
        if m:
            lines.append(f"- {metric}: {sum(r['better'] for r in m)} of {len(m)}")
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _markdown(results: dict[str, Any]) -> str:
    rows = summary_rows(results)
    lines = ["# SAEBench on local data", ""]
    cfg = results.get("config", {})
    lines.append(
        f"Mode: {'quick (tiny random model)' if cfg.get('quick') else 'SmolLM2-135M-Instruct'}; "
        f"sae-probes datasets: {', '.join(cfg.get('probe_datasets', []))}."
    )
    lines += ["", ABSORPTION_CAVEAT, "", "![SAEBench metrics against L0](plot.png)", ""]
    if rows:
        headers = list(dict.fromkeys(k for r in rows for k in r))
        lines += markdown_table(headers, ([_fmt(r.get(h)) for h in headers] for r in rows))
    lines += _frontier_markdown(results)
    lines += ["", "## Wall time (s)", ""]
    for k, v in results.get("timings", {}).items():
        v = ", ".join(f"{n} {s:.1f}" for n, s in v.items()) if isinstance(v, dict) else f"{v:.1f}"
        lines.append(f"- {k}: {v}")
    seconds = []
    for name, entry in sorted(results["saes"].items()):
        cells = [name]
        for e in _evals(results):
            r = entry["evals"].get(e)
            cells.append(
                "-" if r is None else f"{r['seconds']:.1f}" + (" (error)" if r["error"] else "")
            )
        seconds.append(cells)
    lines += ["", *markdown_table(["SAE", *_evals(results)], seconds)]
    errors = [
        f"- {name} / {e}: {r['error']}"
        for name, entry in sorted(results["saes"].items())
        for e, r in entry["evals"].items()
        if r["error"]
    ]
    skipped = [
        f"- {name} / absorption: {entry['evals']['absorption']['metrics']['skipped']}"
        for name, entry in sorted(results["saes"].items())
        if entry["evals"].get("absorption", {}).get("metrics", {}).get("skipped")
    ]
    if errors or skipped:
        lines += ["", "## Errors and skips", "", *errors, *skipped]
    return "\n".join(lines) + "\n"


def _evals(results: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for entry in results["saes"].values():
        for e in entry["evals"]:
            if e not in names:
                names.append(e)
    return names


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(results)
    panels = [("EV", "explained variance"), ("CE score", "CE loss score")]
    probe = [k for k in (rows[0] if rows else {}) if k.startswith("probe k=")]
    if probe:
        panels.append((probe[-1], f"sae-probes accuracy ({probe[-1][6:]})"))
    panels.append(("absorption", "absorption fraction"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arch in sorted({r["arch"] for r in rows}):
            pts = [(r["L0"], r[key]) for r in rows if r["arch"] == arch]
            pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=arch)
        ax.set_xlabel("L0")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(_markdown(results))
    _plot(results, out / "plot.png")
