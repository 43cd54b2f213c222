"""One sweep, start to finish: model and text, plan and costs, one training run, evaluations.

:func:`run_sweep` takes a :class:`~.config.SweepConfig` and, optionally, the model and the
pre-tokenised text (the tests pass a tiny model; the CLI loads SmolLM2 and the local corpus).
All SAEs train in one SAELens ``MultiSAETrainingRunner`` run: one model forward per batch
feeds every SAE the same activations. Before training, one step of every SAE and one model
forward are timed (CPU seconds) on a pilot batch from the far end of the training split,
which the stream never reaches, and the predicted cost of training and evaluation is printed.

Depends on SAELens, :mod:`softsae_lens` (corpus, evaluation, runner) and the sibling modules
:mod:`.config`, :mod:`.calibrate` and :mod:`.report`.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from softsae_lens.data.corpus import (
    TokenCorpus,
    pretokenized_warnings_ignored,
    runner_stream_tokens,
)
from softsae_lens.evals.lm import (
    EvalBudget,
    describe_eval_cost,
    eval_cost,
    evaluate_sae,
    headline_metrics,
    measure_forward_seconds,
)
from softsae_lens.evals.token_stats import soft_k_statistics, token_l0_statistics
from softsae_lens.experiments.lm_shared import PhaseClock
from softsae_lens.experiments.sweep.calibrate import (
    L0SteeredMatchingPursuit,
    calibrate_jumprelu_threshold,
)
from softsae_lens.experiments.sweep.config import SweepConfig, sae_config
from softsae_lens.experiments.sweep.report import write_outputs
from softsae_lens.models import load_model_and_hook
from softsae_lens.training.run_length import multi_runner_config

__all__ = ["build_saes", "load_text", "run_sweep", "sae_configs"]


def load_text(cfg: SweepConfig, model: Any) -> TokenCorpus:
    """The local corpus, pre-tokenised with the model's tokenizer (cached on disk)."""
    from softsae_lens.data.corpus import load_corpus, tokenize_corpus

    return tokenize_corpus(
        load_corpus(cfg.sources), model.tokenizer, cfg.context_size, seed=cfg.seed
    )


def _runner_config(cfg: SweepConfig, sae_cfgs: dict[str, Any], hook: str, model_name: str) -> Any:
    return multi_runner_config(
        sae_cfgs,
        hook,
        model_name,
        "local-corpus",
        context_size=cfg.context_size,
        tokens=cfg.tokens,
        batch_tokens=cfg.batch_tokens,
        lr=cfg.lr,
        device=cfg.device,
        seed=cfg.seed,
        out=cfg.out,
        autocast=cfg.autocast,
    )


@torch.no_grad()
def _pilot_activations(model: Any, text: TokenCorpus, hook: str, rows: int) -> torch.Tensor:
    """Activations of the last ``rows`` training rows, special tokens dropped, flattened."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name, get_special_token_ids

    n = text.train.num_rows
    tokens = text.train.select(range(n - rows, n)).with_format("torch")[:]["tokens"]
    _, cache = model.run_with_cache(
        tokens,
        names_filter=[hook],
        stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(hook),
        prepend_bos=False,
    )
    keep = ~torch.isin(tokens, torch.tensor(get_special_token_ids(model.tokenizer)))
    return cache[hook][keep].float()


def sae_configs(cfg: SweepConfig, d_in: int, d_sae: int) -> dict[str, Any]:
    """The training config of every SAE of the sweep, by run name."""
    return {name: sae_config(arch, target, d_in, d_sae, cfg) for name, arch, target in cfg.runs()}


@torch.no_grad()
def _with_decoder_bias(sae: Any, cfg: SweepConfig, scaled_pilot: torch.Tensor) -> Any:
    """The SAE with its decoder bias at the pilot's mean when ``--b-dec-init mean`` (set before
    JumpReLU's threshold is calibrated on the pilot, which reads it)."""
    if cfg.b_dec_init == "mean":
        sae.b_dec.copy_(scaled_pilot.mean(0).to(sae.b_dec.dtype))
    return sae


def build_saes(
    cfg: SweepConfig, sae_cfgs: dict[str, Any], scaled_pilot: torch.Tensor
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Untrained SAEs (JumpReLU thresholds calibrated on the pilot, matching pursuit steered)
    and, per SAE, the sparsity knob that was set to reach its target."""
    from sae_lens.registry import get_sae_training_class

    saes, knobs = {}, {}
    for name, arch, target in cfg.runs():
        sae_cfg = sae_cfgs[name]
        torch.manual_seed(cfg.seed)  # every architecture starts from the same seed
        if arch == "matching_pursuit":
            saes[name] = _with_decoder_bias(
                L0SteeredMatchingPursuit(sae_cfg, target_l0=target), cfg, scaled_pilot
            )
            knobs[name] = {
                "max_iterations": sae_cfg.max_iterations,
                "initial_residual_threshold": sae_cfg.residual_threshold,
            }
            continue
        saes[name] = _with_decoder_bias(get_sae_training_class(arch)[0](sae_cfg), cfg, scaled_pilot)
        if arch == "jumprelu":
            threshold = calibrate_jumprelu_threshold(saes[name], scaled_pilot, target)
            knobs[name] = {"sparsity_loss": "quadratic", "initial_threshold": threshold}
        else:
            knobs[name] = {"k": target}
    return saes, knobs


def _step_cpu_seconds(sae: Any, batch: torch.Tensor, autocast: bool, step: int) -> float:
    """CPU seconds of training step ``step`` (forward, backward, Adam) of a copy of ``sae``:
    mid-run for the plan, where SoftSAE's soft phase has reached its final alpha."""
    from sae_lens.saes.sae import TrainStepInput

    sae = copy.deepcopy(sae)
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    coefficients = {
        k: (v.value if hasattr(v, "value") else v) for k, v in sae.get_coefficients().items()
    }
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    seconds = []
    for _ in range(2):  # the first one pays one-off costs
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = sae.training_forward_pass(
                TrainStepInput(
                    batch, coefficients, dead, n_training_steps=step, is_logging_step=False
                )
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        seconds.append(time.process_time() - start)
    return seconds[-1]


@torch.no_grad()
def _encode_decode_cpu_seconds(sae: Any, batch: torch.Tensor) -> float:
    """CPU seconds of ``decode(encode(batch))`` in eval mode on a copy of ``sae``: the SAE's
    own share of ``run_evals`` (matching pursuit's greedy steps make it large)."""
    sae = copy.deepcopy(sae).eval()
    seconds = []
    for _ in range(2):
        start = time.process_time()
        sae.decode(sae.encode(batch))
        seconds.append(time.process_time() - start)
    return seconds[-1]


def _plan(
    cfg: SweepConfig,
    model: Any,
    text: TokenCorpus,
    runner_cfg: Any,
    saes: dict[str, Any],
    scaled_pilot: torch.Tensor,
    hook: str,
) -> dict[str, Any]:
    needed = runner_stream_tokens(runner_cfg)
    text.check_budget(needed + cfg.pilot_rows * cfg.context_size, "the sweep's stream and pilot")
    batch = scaled_pilot[: cfg.batch_tokens]
    scale = cfg.batch_tokens / batch.shape[0]  # the pilot can be smaller than a batch
    mid = runner_cfg.total_training_steps // 2
    step_cpu = {
        name: scale * _step_cpu_seconds(sae, batch, cfg.autocast, mid) for name, sae in saes.items()
    }
    rows = min(2, cfg.eval_batch_prompts)
    sample = torch.randint(0, int(model.cfg.d_vocab), (rows, cfg.context_size)).to(cfg.device)
    forward = measure_forward_seconds(model, sample, hook, clock=time.process_time)
    steps = runner_cfg.total_training_steps
    stream_s = needed * forward["partial"] / forward["tokens"]
    budget = _budget(cfg)
    n_soft = sum(1 for _, arch, _ in cfg.runs() if arch == "soft")
    cost = eval_cost(
        budget, n_saes=len(saes), n_soft=n_soft, forward=forward, l0_report=budget.k_report_docs > 0
    )
    per_token = {
        name: _encode_decode_cpu_seconds(sae, batch) / batch.shape[0] for name, sae in saes.items()
    }
    # run_evals encodes and decodes every CE/KL token and every variance token once per SAE.
    cost["sae_seconds"] = (budget.ce_tokens + budget.variance_tokens) * sum(per_token.values())
    cost["seconds"] += cost["sae_seconds"]
    per_arch: dict[str, float] = {}
    for name, arch, _ in cfg.runs():
        per_arch[arch] = per_arch.get(arch, 0.0) + steps * step_cpu[name]
    train_s = stream_s + sum(per_arch.values())
    plan = {
        "steps": steps,
        "stream_tokens": needed,
        "train_split_tokens": text.train_content_tokens,
        "step_cpu_seconds": step_cpu,
        "training_cpu_seconds_by_architecture": per_arch,
        "stream_cpu_seconds": stream_s,
        "training_cpu_seconds": train_s,
        "eval": cost,
        "total_cpu_seconds": train_s + cost["seconds"],
        "forward_cpu_seconds": forward,
    }
    print(
        f"[sweep] training: {len(saes)} SAEs, {cfg.tokens:,} tokens in {steps} steps; the stream "
        f"reads at most {needed:,} of the {text.train_content_tokens:,} training tokens (no token "
        "twice)",
        flush=True,
    )
    shares = ", ".join(f"{arch} {s:.0f} s" for arch, s in per_arch.items())
    print(
        f"[sweep] predicted CPU time (one thread; wall time on a quiet machine): training "
        f"{train_s:.0f} s (model forwards {stream_s:.0f} s; {shares})",
        flush=True,
    )
    print(
        f"[sweep] evaluation: {describe_eval_cost(cost, budget, hook)}, and "
        f"{cost['sae_seconds']:.0f} s in the SAEs themselves",
        flush=True,
    )
    print(f"[sweep] predicted total: {plan['total_cpu_seconds'] / 60:.1f} min", flush=True)
    return plan


def _budget(cfg: SweepConfig) -> EvalBudget:
    return EvalBudget(
        ce_batches=cfg.eval_batches,
        variance_batches=cfg.eval_variance_batches,
        batch_prompts=cfg.eval_batch_prompts,
        context_size=cfg.context_size,
        k_report_docs=cfg.k_report_docs,
        k_report_tokens=cfg.context_size,
    )


def run_sweep(
    cfg: SweepConfig,
    model: Any | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    text: TokenCorpus | None = None,
) -> dict[str, Any]:
    """Train every SAE of ``cfg`` on one activation stream, evaluate each, write ``cfg.out``.

    Args:
        cfg: the sweep's settings.
        model, hook_name, model_name: the language model, its hook to train on and its name
            for metadata (default: :func:`load_model_and_hook`).
        text: the pre-tokenised corpus (default: :func:`load_text`).

    Returns:
        The results dict also written to ``results.json`` (with ``plan_only`` only the plan).
    """
    from sae_lens import SAE
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner
    from sae_lens.training.activation_scaler import ActivationScaler

    import softsae_lens  # noqa: F401  (registers "soft")

    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(cfg.seed)  # SAELens's runner sets no seed of its own
    torch.manual_seed(cfg.seed)
    clock = PhaseClock("sweep")
    if model is None:
        what = cfg.model or cfg.model_path or "SmolLM2-135M-Instruct (offline)"
        print(f"[sweep] loading {what}", flush=True)
        model, hook_name, model_name = load_model_and_hook(
            cfg.model, cfg.layer, cfg.device, cfg.model_path
        )
    if hook_name is None:
        raise ValueError("hook_name is required when a model is passed in")
    model_name = model_name or "model"
    if text is None:
        text = load_text(cfg, model)
    d_in = int(model.cfg.d_model)
    d_sae = cfg.d_sae or 4 * d_in
    print(f"[sweep] corpus {text.name}, hook {hook_name}, d_in {d_in}, d_sae {d_sae}", flush=True)
    print(text.describe(), flush=True)
    clock.lap("model and text")

    pilot = _pilot_activations(model, text, hook_name, cfg.pilot_rows)
    scaler = ActivationScaler()
    scaler.estimate_scaling_factor(d_in, iter([pilot]), 1)
    scaled_pilot = scaler.scale(pilot)
    sae_cfgs = sae_configs(cfg, d_in, d_sae)
    # configure_runner hands SoftSAE's configs the run length before the SAEs are built.
    runner_cfg = _runner_config(cfg, sae_cfgs, hook_name, model_name)
    saes, knobs = build_saes(cfg, sae_cfgs, scaled_pilot)
    plan = _plan(cfg, model, text, runner_cfg, saes, scaled_pilot, hook_name)
    clock.lap("plan")
    header = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model": model_name,
        "hook_name": hook_name,
        "d_in": d_in,
        "d_sae": d_sae,
        "corpus": {"name": text.name, "sources": text.sources},
        "plan": plan,
    }
    if cfg.plan_only:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "plan.json").write_text(json.dumps(header, indent=2, default=float) + "\n")
        print(f"[sweep] wrote {cfg.out / 'plan.json'}", flush=True)
        return header

    print(f"[sweep] training {len(saes)} SAEs on one activation stream", flush=True)
    with pretokenized_warnings_ignored():
        MultiSAETrainingRunner(
            runner_cfg, override_model=model, override_dataset=text.train, override_saes=saes
        ).run()
    clock.lap("training")

    budget = _budget(cfg)
    runs, inference = [], {}
    for name, arch, target in cfg.runs():
        sae = SAE.load_from_disk(cfg.out / "saes" / name, device=cfg.device)
        inference[name] = sae
        print(f"[sweep] evaluating {name}", flush=True)
        metrics = evaluate_sae(sae, model, text.heldout, budget, cfg.device)
        knob = dict(knobs.get(name, {}))
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
                "step_cpu_seconds": plan["step_cpu_seconds"][name],
            }
        )
    clock.lap("evaluation")

    for entry in runs:
        if entry["architecture"] == "soft" and budget.k_report_docs > 0:
            print(f"[sweep] per-token k_hat of {entry['name']}", flush=True)
            entry["k_hat"], _ = soft_k_statistics(
                model, inference[entry["name"]], text.heldout_documents, budget
            )
    clock.lap("k_hat statistics")

    if budget.k_report_docs > 0:
        # Every architecture's per-token L0 against the token's surprisal and next-token loss,
        # on the k_hat report's tokens: does its L0 follow complexity as SoftSAE's k_hat does?
        print("[sweep] per-token L0 of every SAE", flush=True)
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
    write_outputs(results, cfg.out)
    print(f"[sweep] wrote {cfg.out}/ in {results['wall_time_s'] / 60:.1f} min", flush=True)
    return results
