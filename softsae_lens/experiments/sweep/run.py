"""The one LM-comparison pipeline, start to finish: model and text, plan and costs, one training
run, evaluations. The sweep writes its results from it; the demo is a preset of it.

:func:`compare` takes a :class:`~.config.SweepConfig` and, optionally, the model and the
pre-tokenised text (the tests pass a tiny model; the CLIs load SmolLM2 and the local corpus).
All SAEs train in one SAELens ``MultiSAETrainingRunner`` run: one model forward per batch
feeds every SAE the same activations. Before training, one step of every SAE and one model
forward are timed (CPU seconds) on a pilot batch from the far end of the training split,
which the stream never reaches, and the predicted cost of training and evaluation is printed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from softsae_lens.data.corpus import TokenCorpus, pretokenized_warnings_ignored
from softsae_lens.evals.lm import evaluate_sae, headline_metrics
from softsae_lens.evals.token_stats import soft_k_statistics, token_l0_statistics
from softsae_lens.experiments.lm_shared import PhaseClock
from softsae_lens.experiments.sweep.config import SweepConfig
from softsae_lens.experiments.sweep.plan import plan as price
from softsae_lens.experiments.sweep.report import write_outputs
from softsae_lens.experiments.sweep.saes import (
    build_saes,
    pilot_activations,
    sae_configs,
    start_at_training_mean,
)
from softsae_lens.models import load_model_and_hook
from softsae_lens.training.run_length import multi_runner_config

__all__ = [
    "Comparison",
    "StreamedText",
    "build_saes",
    "compare",
    "load_text",
    "run_sweep",
    "sae_configs",
]


@dataclass
class StreamedText:
    """A Hugging Face text dataset, streamed: what the pipeline reads of a corpus."""

    train: Any
    heldout: Any
    heldout_documents: list[str]
    name: str
    sources: None = None

    def describe(self) -> str:
        return f"  {self.name}"


def load_text(cfg: SweepConfig, model: Any) -> TokenCorpus | StreamedText:
    """The local corpus, pre-tokenised with the model's tokenizer (cached on disk), or
    ``cfg.dataset`` streamed."""
    from softsae_lens.data.corpus import load_corpus, to_hf_dataset, tokenize_corpus

    if cfg.dataset is None:
        return tokenize_corpus(
            load_corpus(cfg.sources), model.tokenizer, cfg.context_size, seed=cfg.seed
        )
    from datasets import load_dataset

    dataset = load_dataset(cfg.dataset, split="train", streaming=True)
    heldout = [row["text"] for row in dataset.take(200)]
    name = f"{cfg.dataset} (first 200 documents held out)"
    return StreamedText(dataset.skip(200), to_hf_dataset(heldout), heldout, name)


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        results: what the sweep writes to ``results.json`` (with ``plan_only``, the header).
        text: the corpus it trained and evaluated on.
        k_records: per SoftSAE, its per-token k_hat records (for plots).
        clock: the phase clock, still running (a preset times its own outputs on it).
    """

    results: dict[str, Any]
    text: Any
    clock: PhaseClock
    k_records: dict[str, list[Any]] = field(default_factory=dict)


def _flags(cfg: SweepConfig) -> dict[str, Any]:
    """The command-line settings (a preset's own fields are not flags)."""
    return {
        f.name: str(v) if isinstance(v := getattr(cfg, f.name), Path) else v
        for f in fields(cfg)
        if f.metadata.get("cmd", True)
    }


def compare(
    cfg: SweepConfig,
    model: Any | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    text: Any | None = None,
) -> Comparison:
    """Train every SAE of ``cfg`` on one activation stream, evaluate each; write only the SAEs.

    Args:
        cfg: the comparison's settings.
        model, hook_name, model_name: the language model, its hook to train on and its name
            for metadata (default: :func:`load_model_and_hook`).
        text: the corpus (default: :func:`load_text`).
    """
    from sae_lens import SAE
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner
    from sae_lens.training.activation_scaler import ActivationScaler

    import softsae_lens  # noqa: F401  (registers "soft")

    torch.set_num_threads(cfg.threads)
    if cfg.model is None:  # SmolLM2 or a local folder: nothing to download
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(cfg.seed)  # SAELens's runner sets no seed of its own
    torch.manual_seed(cfg.seed)
    clock = PhaseClock(cfg.label)
    if model is None:
        what = cfg.model or cfg.model_path or "SmolLM2-135M-Instruct (offline)"
        print(f"[{cfg.label}] loading {what}", flush=True)
        model, hook_name, model_name = load_model_and_hook(
            cfg.model, cfg.layer, cfg.device, cfg.model_path
        )
    if hook_name is None:
        raise ValueError("hook_name is required when a model is passed in")
    model_name = model_name or "model"
    if text is None:
        text = load_text(cfg, model)
    d_in = int(model.cfg.d_model)
    d_sae = cfg.d_sae or cfg.d_sae_per_d_model * d_in
    print(
        f"[{cfg.label}] corpus {text.name}, hook {hook_name}, d_in {d_in}, d_sae {d_sae}\n"
        + text.describe(),
        flush=True,
    )
    clock.lap("model and text")

    saes = knobs = scaled_pilot = None
    if cfg.pilot_rows:
        pilot = pilot_activations(model, text, hook_name, cfg.pilot_rows)
        scaler = ActivationScaler()
        scaler.estimate_scaling_factor(d_in, iter([pilot]), 1)
        scaled_pilot = scaler.scale(pilot)
    sae_cfgs = sae_configs(cfg, d_in, d_sae)
    # configure_runner hands SoftSAE's configs the run length before the SAEs are built.
    runner_cfg = multi_runner_config(sae_cfgs, cfg, hook_name, model_name, text.name)
    if scaled_pilot is not None:
        saes, knobs = build_saes(cfg, sae_cfgs, scaled_pilot)
    plan = price(cfg, model, text, runner_cfg, hook_name, saes, scaled_pilot)
    clock.lap("plan")
    header = {
        "config": _flags(cfg),
        "model": model_name,
        "hook_name": hook_name,
        "d_in": d_in,
        "d_sae": d_sae,
        "corpus": {"name": text.name, "sources": text.sources},
        "plan": plan,
    }
    if cfg.plan_only:
        return Comparison(header, text, clock)

    if saes is None:  # no pilot: built here, in turn from the seeded stream
        saes, knobs = build_saes(cfg, sae_cfgs, None)
        if cfg.b_dec_init == "mean":
            start_at_training_mean(saes, model, hook_name, text, cfg.label)
    # SAELens's mixing buffer shuffles the stream with the global generator, and building an SAE
    # draws from it (SoftSAE's estimator more than TopK's): without this the training order,
    # and so every SAE, would depend on which architecture the sweep built last, and a subset
    # of a sweep (--targets 32, or one side of two sweeps side by side) would not reproduce it.
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    cache_metrics = None
    if cfg.activation_cache is not None:
        from softsae_lens.experiments.sweep.cached import train_from_cache

        cache_metrics = train_from_cache(cfg, saes, runner_cfg, model, hook_name, model_name, text)
    else:
        print(f"[{cfg.label}] training {len(saes)} SAEs on one activation stream", flush=True)
        with pretokenized_warnings_ignored():
            MultiSAETrainingRunner(
                runner_cfg, override_model=model, override_dataset=text.train, override_saes=saes
            ).run()
    clock.lap("training")

    budget = cfg.eval_budget()
    runs, inference = [], {}
    for name, arch, target in cfg.runs():
        sae = SAE.load_from_disk(cfg.out / "saes" / name, device=cfg.device)
        inference[name] = sae
        print(f"[{cfg.label}] evaluating {name}", flush=True)
        metrics = evaluate_sae(sae, model, text.heldout, budget, cfg.device)
        knob = dict(knobs[name])
        if arch == "matching_pursuit":
            knob["final_residual_threshold"] = sae.cfg.residual_threshold
            history = saes[name].l0_history
            knob["training_l0_last_10_steps"] = sum(history[-10:]) / max(1, len(history[-10:]))
        runs.append(
            {
                "name": name,
                "architecture": arch,
                "target_l0": target,
                "metrics": headline_metrics(metrics),
                "run_evals": metrics,
                "knob": knob,
                **(
                    {"cache_heldout_metrics": cache_metrics[name]}
                    if cache_metrics is not None
                    else {}
                ),
                **({"step_cpu_seconds": plan["step_cpu_seconds"][name]} if cfg.pilot_rows else {}),
            }
        )
    clock.lap("evaluation")

    k_records = {}
    for entry in runs:
        if entry["architecture"] == "soft" and budget.k_report_docs > 0:
            print(f"[{cfg.label}] per-token k_hat of {entry['name']}", flush=True)
            entry["k_hat"], k_records[entry["name"]] = soft_k_statistics(
                model, inference[entry["name"]], text.heldout_documents, budget
            )
    clock.lap("k_hat statistics")

    if cfg.l0_report and budget.k_report_docs > 0:
        # Every architecture's per-token L0 against the token's surprisal and next-token loss,
        # on the k_hat report's tokens: does its L0 follow complexity as SoftSAE's k_hat does?
        print(f"[{cfg.label}] per-token L0 of every SAE", flush=True)
        l0_stats = token_l0_statistics(model, inference, text.heldout_documents, budget)
        for entry in runs:
            entry["l0_tokens"] = l0_stats[entry["name"]]
        clock.lap("per-token L0 statistics")

    results = {
        **header,
        "eval_budget": {
            "ce_tokens": budget.ce_tokens,
            "variance_tokens": budget.variance_tokens,
            "k_report_docs": budget.k_report_docs,
        },
        "runs": runs,
        "phase_times_s": clock.phases,
        "wall_time_s": clock.total,
    }
    return Comparison(results, text, clock, k_records)


def run_sweep(
    cfg: SweepConfig,
    model: Any | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    text: TokenCorpus | None = None,
) -> dict[str, Any]:
    """:func:`compare`, then the sweep's outputs in ``cfg.out``: ``results.json``, ``results.md``
    and the Pareto plots (with ``plan_only``, ``plan.json``).

    Returns:
        The results dict written to ``results.json`` (with ``plan_only`` only the header).
    """
    done = compare(cfg, model, hook_name, model_name, text)
    if cfg.plan_only:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "plan.json").write_text(json.dumps(done.results, indent=2, default=float) + "\n")
        print(f"[{cfg.label}] wrote {cfg.out / 'plan.json'}", flush=True)
        return done.results
    write_outputs(done.results, cfg.out)
    print(f"[{cfg.label}] wrote {cfg.out}/ in {done.clock.total / 60:.1f} min", flush=True)
    return done.results
