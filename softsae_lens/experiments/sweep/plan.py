"""What a comparison will cost, printed before it trains: the tokens its stream reads, one timed
model forward priced over the evaluation, and with a pilot batch one timed step of every SAE."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from softsae_lens.data.corpus import TokenCorpus, runner_stream_tokens
from softsae_lens.evals.lm import describe_eval_cost, eval_cost, measure_forward_seconds
from softsae_lens.experiments.sweep.config import SweepConfig

__all__ = ["plan"]


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


def plan(
    cfg: SweepConfig,
    model: Any,
    text: Any,
    runner_cfg: Any,
    hook: str,
    saes: dict[str, Any] | None = None,
    scaled_pilot: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Check the stream fits the training split, print the predicted costs and return them.

    Without a pilot (``saes`` None) only the evaluation is priced, from one forward timed in
    wall seconds (it may run on an accelerator); with one, training too, in CPU seconds of one
    thread, from a timed step of every SAE.
    """
    needed = runner_stream_tokens(runner_cfg)
    steps = runner_cfg.total_training_steps
    if isinstance(text, TokenCorpus):
        text.check_budget(
            needed + cfg.pilot_rows * cfg.context_size,
            f"--tokens={cfg.tokens:,} and --pilot-rows={cfg.pilot_rows}",
        )
    step_cpu = {}
    if saes is not None and scaled_pilot is not None:
        batch = scaled_pilot[: cfg.batch_tokens]
        scale = cfg.batch_tokens / batch.shape[0]  # the pilot can be smaller than a batch
        step_cpu = {
            name: scale * _step_cpu_seconds(sae, batch, cfg.autocast, steps // 2)
            for name, sae in saes.items()
        }
    rows = min(2, cfg.eval_batch_prompts)
    sample = torch.randint(0, int(model.cfg.d_vocab), (rows, cfg.context_size)).to(cfg.device)
    clock = time.perf_counter if saes is None else time.process_time
    forward = measure_forward_seconds(model, sample, hook, clock=clock)
    budget = cfg.eval_budget()
    runs = cfg.runs()
    n_soft = sum(1 for _, arch, _ in runs if arch == "soft")
    l0_report = cfg.l0_report and budget.k_report_docs > 0
    cost = eval_cost(budget, n_saes=len(runs), n_soft=n_soft, forward=forward, l0_report=l0_report)
    split = (
        f" of the {text.train_content_tokens:,} training tokens (no token twice)"
        if isinstance(text, TokenCorpus)
        else ""
    )
    print(
        f"[{cfg.label}] training: {len(runs)} SAEs, {cfg.tokens:,} tokens in {steps} steps; the "
        f"stream reads at most {needed:,}{split}",
        flush=True,
    )
    if saes is None or scaled_pilot is None:
        print(f"[{cfg.label}] evaluation: {describe_eval_cost(cost, budget, hook)}", flush=True)
        return {"stream_tokens": needed, "eval_cost": cost, "forward_seconds": forward}

    batch = scaled_pilot[: cfg.batch_tokens]
    per_token = {
        name: _encode_decode_cpu_seconds(sae, batch) / batch.shape[0] for name, sae in saes.items()
    }
    # run_evals encodes and decodes every CE/KL token and every variance token once per SAE.
    cost["sae_seconds"] = (budget.ce_tokens + budget.variance_tokens) * sum(per_token.values())
    cost["seconds"] += cost["sae_seconds"]
    stream_s = needed * forward["partial"] / forward["tokens"]
    per_arch: dict[str, float] = {}
    for name, arch, _ in runs:
        per_arch[arch] = per_arch.get(arch, 0.0) + steps * step_cpu[name]
    train_s = stream_s + sum(per_arch.values())
    shares = ", ".join(f"{arch} {s:.0f} s" for arch, s in per_arch.items())
    print(
        f"[{cfg.label}] predicted CPU time (one thread; wall time on a quiet machine): training "
        f"{train_s:.0f} s (model forwards {stream_s:.0f} s; {shares})",
        flush=True,
    )
    print(
        f"[{cfg.label}] evaluation: {describe_eval_cost(cost, budget, hook)}, and "
        f"{cost['sae_seconds']:.0f} s in the SAEs themselves",
        flush=True,
    )
    total = train_s + cost["seconds"]
    print(f"[{cfg.label}] predicted total: {total / 60:.1f} min", flush=True)
    return {
        "steps": steps,
        "stream_tokens": needed,
        "train_split_tokens": text.train_content_tokens,
        "step_cpu_seconds": step_cpu,
        "training_cpu_seconds_by_architecture": per_arch,
        "stream_cpu_seconds": stream_s,
        "training_cpu_seconds": train_s,
        "eval": cost,
        "total_cpu_seconds": total,
        "forward_cpu_seconds": forward,
    }
