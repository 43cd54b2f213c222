"""SoftSAE vs SAELens TopK: training step and inference encode time, printed as JSON.

    python benchmarks/bench_train_step.py [--d-in 768] [--d-sae 16384] [--batch 4096] [--repeats 3]

A training step is ``training_forward_pass`` + backward + Adam step, as SAELens's trainer does
it. SoftSAE is timed in its soft phase (the Soft Top-K path, alpha at its floor) and in its
hard phase; TopK uses SoftSAE's target k. Measurements alternate between the SAEs inside one
process so that load from other processes hits both alike; reported numbers are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stepper:
    """One SAE with its optimizer; ``__call__`` runs one training step at a given index."""

    def __init__(self, sae, x: torch.Tensor, dead: torch.Tensor, lr: float = 3e-4):
        self.sae, self.x, self.dead = sae, x, dead
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=lr)

    def __call__(self, step: int) -> None:
        out = self.sae.training_forward_pass(
            TrainStepInput(
                sae_in=self.x,
                coefficients={},
                dead_neuron_mask=self.dead,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)
    dead = torch.zeros(args.d_sae, dtype=torch.bool, device=device)

    total = 1000
    soft_cfg = SoftTrainingSAEConfig(
        d_in=args.d_in, d_sae=args.d_sae, k=args.k, total_training_steps=total, device=str(device)
    )
    soft = _Stepper(SoftTrainingSAE(soft_cfg).to(device), x, dead)
    topk = _Stepper(
        TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=str(device))
        ).to(device),
        x,
        dead,
    )
    soft_step = 100  # past the 1% alpha/k anneal: alpha at its floor, still the soft phase
    hard_step = total - 1

    # warm-up: one step each (allocator, Adam state)
    soft(soft_step)
    topk(0)
    times = {"soft_phase": [], "hard_phase": [], "topk": [], "soft_encode": [], "topk_encode": []}
    for i in range(args.repeats):
        times["soft_phase"].append(_time(lambda i=i: soft(soft_step + 1 + i), device))
        times["topk"].append(_time(lambda i=i: topk(1 + i), device))
        times["hard_phase"].append(_time(lambda: soft(hard_step), device))
    with torch.no_grad():
        soft.sae.eval()
        topk.sae.eval()
        soft.sae.encode(x)
        topk.sae.encode(x)
        for _ in range(args.repeats):
            times["soft_encode"].append(_time(lambda: soft.sae.encode(x), device))
            times["topk_encode"].append(_time(lambda: topk.sae.encode(x), device))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "d_in": args.d_in,
                "d_sae": args.d_sae,
                "batch": args.batch,
                "k": args.k,
                "dtype": "float32",
                "repeats": args.repeats,
                "median_s": {name: round(value, 4) for name, value in med.items()},
                "train_step_soft_phase_over_topk": round(med["soft_phase"] / med["topk"], 3),
                "train_step_hard_phase_over_topk": round(med["hard_phase"] / med["topk"], 3),
                "encode_over_topk": round(med["soft_encode"] / med["topk_encode"], 3),
                "targets": {"train_step_over_topk": 1.6, "encode_over_topk": 1.5},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
