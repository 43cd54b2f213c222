"""The demo's pipeline: load the model and text, train SoftSAE and TopK in one SAELens run,
evaluate both on held-out text, write the outputs."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from softsae_lens.data.corpus import TokenCorpus
from softsae_lens.evals.lm import (
    describe_eval_cost,
    eval_cost,
    evaluate_sae,
    headline_metrics,
    measure_forward_seconds,
)
from softsae_lens.evals.token_stats import fmt_rho, soft_k_statistics
from softsae_lens.experiments.demo.config import SAE_NAMES, DemoConfig, parse_args
from softsae_lens.experiments.demo.report import plot_k_hist, write_report
from softsae_lens.experiments.lm_shared import PhaseClock
from softsae_lens.models import load_model_and_hook
from softsae_lens.training.decoder_bias import activation_mean, start_decoder_bias_at_mean
from softsae_lens.training.run_length import multi_runner_config

__all__ = ["DemoText", "load_text", "main", "run_demo", "runner_config"]


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


def _training_mean(model: Any, hook_name: str, text: DemoText, rows: int = 32) -> Any:
    """The mean activation over the first ``rows`` training rows, special tokens left out."""
    if text.tokens is None:
        raise ValueError(
            "--b-dec-init mean needs the local corpus (its pre-tokenised rows), not --dataset"
        )
    ids = torch.tensor(text.train[:rows]["tokens"])
    mean = activation_mean(
        model, hook_name, ids.split(8), exclude_token_ids=model.tokenizer.all_special_ids
    )
    print(f"[demo] decoder bias starts at the mean of {mean.tokens:,} training tokens", flush=True)
    return mean


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
        runner = MultiSAETrainingRunner(
            runner_cfg, override_model=model, override_dataset=text.train
        )
        if cfg.b_dec_init == "mean":
            start_decoder_bias_at_mean(runner.saes, _training_mean(model, hook_name, text))
        runner.run()
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
        "b_dec_init": cfg.b_dec_init,
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
