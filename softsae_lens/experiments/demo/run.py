"""The demo's run: the LM-comparison pipeline's SoftSAE-and-TopK preset, then the demo's outputs
(``metrics.json``, ``report.md`` and two plots)."""

from __future__ import annotations

import json
from typing import Any

from softsae_lens.evals.token_stats import fmt_rho
from softsae_lens.experiments.demo.config import DemoConfig, parse_args
from softsae_lens.experiments.demo.report import plot_k_hist, write_report
from softsae_lens.experiments.sweep.run import Comparison, compare

__all__ = ["main", "run_demo", "summary"]


def summary(cfg: DemoConfig, done: Comparison) -> dict[str, Any]:
    """What the demo writes to ``metrics.json``, from the pipeline's results."""
    results, text = done.results, done.text
    runs = {run["name"]: run for run in results["runs"]}
    plan = results["plan"]
    return {
        "model": results["model"],
        "hook_name": results["hook_name"],
        "layer": cfg.layer,
        "corpus": text.name,
        "corpus_sources": text.describe(),
        "corpus_tokens": text.sources,
        "training_tokens": cfg.tokens,
        "steps": cfg.tokens // cfg.batch_tokens,
        "batch_tokens": cfg.batch_tokens,
        "lr": cfg.lr,
        "b_dec_init": cfg.b_dec_init,
        "d_sae": results["d_sae"],
        "k": cfg.k,
        "seed": cfg.seed,
        "eval_budget": {
            "ce_tokens": results["eval_budget"]["ce_tokens"],
            "variance_tokens": results["eval_budget"]["variance_tokens"],
            "batch_prompts": cfg.eval_batch_prompts,
            "k_report_docs": cfg.k_report_docs,
        },
        "plan": plan,
        "metrics": {name: run["metrics"] for name, run in runs.items()},
        "run_evals": {name: run["run_evals"] for name, run in runs.items()},
        "softsae_k_hat": runs["softsae"]["k_hat"],
        "train_time_s": done.clock.phases["training"],
        "phase_times_s": done.clock.phases,
        "wall_time_s": done.clock.total,
    }


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train both SAEs, evaluate them, write ``cfg.out`` and return the summary dict."""
    from softsae_lens.analysis import plot_tokens_png

    done = compare(cfg.as_sweep())
    if cfg.plan_only:
        return {"plan": done.results["plan"], "corpus_sources": done.text.describe()}

    records = done.k_records["softsae"]
    plot_k_hist([r.k_hat for r in records if not r.excluded], cfg.out / "k_hat_hist.png", cfg.k)
    first_doc = [r for r in records if r.text_index == records[0].text_index]
    plot_tokens_png(
        first_doc, cfg.out / "sample_tokens.png", title="SoftSAE: latents per token (held-out text)"
    )
    done.clock.lap("plots")

    metrics = summary(cfg, done)
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    table = write_report(cfg.out, metrics)
    print("\n" + table)
    k_stats = metrics["softsae_k_hat"]
    print(
        f"\nSoftSAE k_hat: mean {k_stats['mean']:.2f}, std {k_stats['std']:.2f}; Spearman with "
        f"next-token loss {fmt_rho(k_stats['spearman_with_next_token_loss'])}"
    )
    print(
        f"wrote {cfg.out}/ (report.md, metrics.json, PNGs, saes/) in {metrics['wall_time_s']:.0f} s"
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m softsae_lens.demo``."""
    run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
