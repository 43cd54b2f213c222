"""The sweep's outputs: ``results.json``, ``results.md`` and the L0-vs-quality Pareto plots.

Everything here reads the results dict that :func:`~.run.run_sweep` builds (or the saved
``results.json``, for ``--replot``); nothing trains or evaluates.

Depends on matplotlib (object-oriented API, Agg canvas) and the standard library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = [
    "PARETO_METRICS",
    "format_number",
    "markdown",
    "matched_l0_rows",
    "off_target",
    "plot_pareto",
    "relative_to_cwd",
    "sweep_command",
    "write_outputs",
]

PARETO_METRICS = {
    "explained_variance": "explained variance",
    "ce_loss_score": "CE-loss score",
    "kl_div_score": "KL-div score",
}
# One colour per architecture, fixed so plots of different runs compare at a glance.
COLORS = {
    "soft": "#c0392b",
    "topk": "#2c7fb8",
    "batchtopk": "#41ab5d",
    "matryoshka_batchtopk": "#8856a7",
    "jumprelu": "#e6a817",
    "matching_pursuit": "#636363",
}
LABELS = {"soft": "SoftSAE"}


def format_number(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits; ints with thousands separators; n/a for None or inf/nan."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _knob(run: dict[str, Any]) -> str:
    knob = run.get("knob", {})
    if "k" in knob:
        return f"k = {knob['k']}"
    if "initial_threshold" in knob:
        return f"quadratic L0 loss, threshold from {knob['initial_threshold']:.3g}"
    if "max_iterations" in knob:
        final = knob.get("final_residual_threshold")
        end = f" -> {final:.3g}" if final is not None else ""
        return f"residual threshold steered{end}, max {knob['max_iterations']} iterations"
    return ""


def relative_to_cwd(command: str) -> str:
    """A recorded command as typed from the working directory (absolute paths under it shortened)."""
    return command.replace(f"{Path.cwd()}/", "")


def sweep_command(results: dict[str, Any]) -> str:
    """The sweep's command line: every flag whose value differs from its default (for merged
    sweeps, each part's, side by side)."""
    from softsae_lens.experiments.sweep.config import SweepConfig

    if "merged_from" in results:
        return " & ".join(part["command"] for part in results["merged_from"]) + " (side by side)"

    defaults = vars(SweepConfig())
    parts = ["python -m softsae_lens.experiments.sweep"]
    for name, value in results["config"].items():
        if name not in defaults or name in ("plan_only", "quick", "replot"):
            continue
        default = defaults[name]
        if isinstance(default, Path) or (default is None and isinstance(value, str)):
            same = str(default) == str(value)
        elif isinstance(default, tuple):
            same = tuple(default) == tuple(value or ())
        else:
            same = default == value
        if same or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    return relative_to_cwd(" ".join(parts))


# what sweeps merged into one report must share, besides their config (architectures and
# output folders aside)
_MERGE_SAME = ("model", "hook_name", "d_in", "d_sae", "eval_budget")
_MERGE_OWN = ("architectures", "out", "activation_cache")


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One sweep's results from sweeps over disjoint architectures with the same settings (run
    side by side, one per core): their runs in one table, the matched-L0 rows and plots across
    them. Raises ValueError naming the first setting or SAE name two parts do not agree on."""
    from softsae_lens.experiments.sweep.config import ARCHITECTURES

    if len(parts) < 2:
        raise ValueError(f"--merge needs at least two results.json, got {len(parts)}")
    first = parts[0]

    def settings(results: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in results["config"].items() if k not in _MERGE_OWN}
        both = {**own, **{k: results.get(k) for k in _MERGE_SAME}, "corpus": results["corpus"]}
        return json.loads(json.dumps(both, default=str))  # as read back from results.json

    for i, part in enumerate(parts[1:], start=2):
        a, b = settings(first), settings(part)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            raise ValueError(
                f"--merge: sweep {i} ran with other settings than sweep 1: "
                + "; ".join(f"{k} {b.get(k)!r} against {a.get(k)!r}" for k in differ)
            )
    names = [run["name"] for part in parts for run in part["runs"]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--merge: SAEs {repeated} are in more than one sweep")
    runs = sorted(
        (run for part in parts for run in part["runs"]),
        key=lambda r: (ARCHITECTURES.index(r["architecture"]), r["target_l0"]),
    )
    return {
        **first,
        "config": {
            **first["config"],
            "architectures": list(dict.fromkeys(r["architecture"] for r in runs)),
        },
        "plan": {
            **first["plan"],
            "total_cpu_seconds": sum(part["plan"]["total_cpu_seconds"] for part in parts),
        },
        "runs": runs,
        "phase_times_s": {},
        "wall_time_s": max(part.get("wall_time_s", 0.0) for part in parts),
        "merged_from": [
            {"command": sweep_command(part), "wall_time_s": part.get("wall_time_s", 0.0)}
            for part in parts
        ],
    }


def _data_path(results: dict[str, Any]) -> str:
    """How the SAEs got their activations."""
    cached = bool(results["config"].get("activation_cache"))
    if "merged_from" in results:
        each = "the shared activation cache" if cached else "its own activation stream"
        return f"{len(results['merged_from'])} sweeps side by side, each training from {each}"
    n = len(results["runs"])
    if cached:
        return f"the same activations cached on disk for all {n} SAEs"
    return f"one activation stream for all {n} SAEs"


def markdown(results: dict[str, Any]) -> str:
    """The report: the setup, one table row per SAE, and SoftSAE's per-token k statistics."""
    cfg = results["config"]
    plan = results["plan"]
    budget = results.get("eval_budget", {})
    sources = ", ".join(
        f"{name} {s['tokens']:,} tokens" for name, s in results["corpus"]["sources"].items()
    )
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results.get("phase_times_s", {}).items())
    lines = [
        "# SoftSAE against SAELens's architectures across target L0s",
        "",
        f"- Model: {results['model']}, hook `{results['hook_name']}`, d_in {results['d_in']}",
        f"- Text: {results['corpus']['name']} ({sources}); held-out documents by hash",
        f"- Training: {cfg['tokens']:,} tokens, {plan['steps']} steps of {cfg['batch_tokens']} "
        f"tokens, lr {cfg['lr']}, d_sae {results['d_sae']}, {_data_path(results)}",
        f"- Evaluation (SAELens `run_evals`, special tokens excluded): CE/KL on "
        f"{budget.get('ce_tokens', 0):,} held-out tokens, explained variance, MSE and L0 on "
        f"{budget.get('variance_tokens', 0):,}; dead latents = never active on those tokens",
        f"- Wall time: {results.get('wall_time_s', 0) / 60:.1f} min"
        + (f" ({phases})" if phases else " (the longer sweep)")
        + "; predicted "
        f"{plan['total_cpu_seconds'] / 60:.1f} min of CPU",
        *(
            [
                "- Commands, run side by side and merged with `--merge`: "
                + "; ".join(
                    f"`{part['command']}` ({part['wall_time_s'] / 60:.1f} min)"
                    for part in results["merged_from"]
                )
            ]
            if "merged_from" in results
            else [f"- Command: `{sweep_command(results)}`"]
        ),
        "",
        "| architecture | target L0 | L0 | L0 off target | explained variance | MSE | "
        "CE-loss score | KL-div score | dead latents | step CPU s | sparsity knob |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        m = run["metrics"]
        lines.append(
            f"| {LABELS.get(run['architecture'], run['architecture'])} | {run['target_l0']} | "
            f"{format_number(m['l0'], 3)} | {off_target(m['l0'], run['target_l0'])} | "
            f"{format_number(m['explained_variance'])} | {format_number(m['mse'])} | "
            f"{format_number(m['ce_loss_score'])} | {format_number(m['kl_div_score'])} | "
            f"{format_number(m['dead_latents'])} | {run['step_cpu_seconds']:.3f} | {_knob(run)} |"
        )
    soft = [run for run in results["runs"] if "k_hat" in run]
    if soft:
        lines += [
            "",
            "## SoftSAE's per-token k_hat on held-out text (special tokens excluded)",
            "",
            "| target | tokens | mean | p5 | p50 | p95 | at k_max | Spearman with surprisal | "
            "Spearman with next-token loss |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in soft:
            k = run["k_hat"]
            lines.append(
                f"| {run['target_l0']} | {k['count']:,} | {k['mean']:.2f} | {k['p5']:.1f} | "
                f"{k['median']:.1f} | {k['p95']:.1f} | {k['at_k_max']:.1%} | "
                f"{format_number(k['spearman_with_token_surprisal']['rho'], 3)} | "
                f"{format_number(k['spearman_with_next_token_loss']['rho'], 3)} |"
            )
    with_l0 = [run for run in results["runs"] if "l0_tokens" in run]
    if with_l0:
        lines += [
            "",
            "## Every SAE's per-token L0 on held-out text (special tokens excluded)",
            "",
            "Does an architecture's L0 follow the token's complexity? The L0 of each held-out "
            "token at inference (what `encode` gives) against the token's surprisal and the "
            "next-token loss under the clean model, on the same tokens as SoftSAE's k_hat above.",
            "",
            "| architecture | target L0 | tokens | mean | p5 | p50 | p95 | "
            "Spearman with surprisal | Spearman with next-token loss |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in sorted(with_l0, key=lambda r: (r["target_l0"], r["name"])):
            t = run["l0_tokens"]
            lines.append(
                f"| {LABELS.get(run['architecture'], run['architecture'])} | {run['target_l0']} | "
                f"{t['count']:,} | {t['mean']:.2f} | {t['p5']:.1f} | {t['median']:.1f} | "
                f"{t['p95']:.1f} | {format_number(t['spearman_with_token_surprisal']['rho'], 3)} | "
                f"{format_number(t['spearman_with_next_token_loss']['rho'], 3)} |"
            )
    matched = matched_l0_rows(results)
    if matched:
        lines += [
            "",
            "## SoftSAE against TopK at SoftSAE's own L0",
            "",
            "TopK interpolated (linearly in log L0) between its two runs around SoftSAE's "
            "held-out L0; TopK's outermost run where SoftSAE's L0 is within 3% beyond it; n/a "
            "further out.",
            "",
            "| target | SoftSAE L0 | metric | SoftSAE score | TopK score at that L0 | difference |",
            "|---|---|---|---|---|---|",
        ]
        for row in matched:
            lines.append(
                f"| {row['target_l0']} | {format_number(row['l0'], 3)} | {PARETO_METRICS[row['metric']]} | "
                f"{format_number(row['soft'])} | {format_number(row['topk'])} | {_signed(row['difference'])} |"
            )
    lines += ["", "![Pareto fronts](pareto.png)", ""]
    return "\n".join(lines)


def off_target(l0: float | None, target: float) -> str:
    """How far ``l0`` is from ``target``, as a signed percentage (n/a without an L0)."""
    if l0 is None or not math.isfinite(l0):
        return "n/a"
    return f"{(l0 - target) / target:+.1%}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


# An L0 this close beyond TopK's outermost run is compared with that run rather than left out
# (a target's own run: SoftSAE's L0 is held within a few percent of it).
EDGE_TOLERANCE = 0.03


def interpolate_at_l0(points: list[tuple[float, float]], l0: float) -> float | None:
    """The value at ``l0`` on the line through ``points`` (L0, value), linear in log L0; the
    outermost point's value within ``EDGE_TOLERANCE`` beyond the range; None further out
    (no extrapolation)."""
    points = sorted(p for p in points if p[0] is not None and p[0] > 0 and p[1] is not None)
    if points and points[-1][0] < l0 <= points[-1][0] * (1 + EDGE_TOLERANCE):
        return points[-1][1]
    if points and points[0][0] * (1 - EDGE_TOLERANCE) <= l0 < points[0][0]:
        return points[0][1]
    for (l0_a, v_a), (l0_b, v_b) in zip(points, points[1:], strict=False):
        if l0_a <= l0 <= l0_b:
            if l0_b == l0_a:
                return v_a
            t = (math.log(l0) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return v_a + t * (v_b - v_a)
    if len(points) == 1 and points[0][0] == l0:
        return points[0][1]
    return None


def matched_l0_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every SoftSAE run against TopK interpolated to SoftSAE's held-out L0, per metric."""
    topk = [run for run in results["runs"] if run["architecture"] == "topk"]
    rows = []
    for run in results["runs"]:
        if run["architecture"] != "soft" or not topk:
            continue
        l0 = run["metrics"]["l0"]
        for metric in PARETO_METRICS:
            soft_value = run["metrics"].get(metric)
            topk_value = interpolate_at_l0(
                [(t["metrics"]["l0"], t["metrics"].get(metric)) for t in topk], l0
            )
            rows.append(
                {
                    "target_l0": run["target_l0"],
                    "l0": l0,
                    "metric": metric,
                    "soft": soft_value,
                    "topk": topk_value,
                    "difference": None
                    if topk_value is None or soft_value is None
                    else soft_value - topk_value,
                }
            )
    return rows


def plot_pareto(results: dict[str, Any], path: Path, metrics: list[str] | None = None) -> None:
    """L0 (log scale) against each quality metric, one line per architecture, points at the
    L0 each SAE actually reached on held-out text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    metrics = metrics or list(PARETO_METRICS)
    fig = Figure(figsize=(4.6 * len(metrics), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    archs = list(dict.fromkeys(run["architecture"] for run in results["runs"]))
    targets = sorted({run["target_l0"] for run in results["runs"]})
    for ax, metric in zip(axes, metrics, strict=True):
        for arch in archs:
            points = sorted(
                (run["metrics"]["l0"], run["metrics"][metric])
                for run in results["runs"]
                if run["architecture"] == arch
                and run["metrics"]["l0"] is not None
                and run["metrics"][metric] is not None
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            soft = arch == "soft"
            ax.plot(
                xs,
                ys,
                marker="o",
                color=COLORS.get(arch),
                linewidth=2.4 if soft else 1.4,
                zorder=3 if soft else 2,
                label=LABELS.get(arch, arch),
            )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        for target in targets:
            ax.axvline(target, color="0.8", linestyle=":", linewidth=1, zorder=0)
        ax.set_xlabel("L0 on held-out text (log scale; dotted: targets)")
        ax.set_ylabel(PARETO_METRICS.get(metric, metric))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['model']} {results['hook_name']}: higher and further left is better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.md``, ``pareto.png`` (all three metrics) and one
    ``pareto_<metric>.png`` per metric into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot_pareto(results, out / "pareto.png")
    for metric in PARETO_METRICS:
        plot_pareto(results, out / f"pareto_{metric}.png", [metric])
