"""SoftSAE vs SAELens TopK: training step, peak memory and inference encode+decode, as JSON.

    python benchmarks/bench_train_step.py                     # both sizes, fp32, default threads
    python benchmarks/bench_train_step.py --size small --threads 1 2 --load idle busy
    python benchmarks/bench_train_step.py --size big --autocast bf16 --compile
    python benchmarks/bench_train_step.py --device cuda --autocast none bf16
    python benchmarks/bench_train_step.py --size small --threads 1 --k-max-factor 4   # k_max = 4k

Sizes: ``big`` is d_in 768, d_sae 16384, batch 4096, k 64 (an LLM-sized SAE); ``small`` is
d_in 160, d_sae 512, batch 1024, k 11 (the synthetic experiments' size, where per-op overheads
dominate). A training step is ``training_forward_pass`` + backward + Adam step, as SAELens's
trainer runs it. SoftSAE is timed in its soft phase (after the alpha/k anneal, the path 99% of
soft steps take) and in its hard phase; TopK (SAELens's ``TopKTrainingSAE``, defaults) uses the
same k. Measurements alternate between the SAEs inside one process, so load from other
processes hits both alike; reported times are medians and ratios are of medians.

``--load busy`` runs a competing process (a single-threaded matmul loop) during the
measurement, to show what a shared machine does to each step. ``--compile`` also times both
steps under ``torch.compile`` (inductor), as SAELens's ``compile_sae=True`` runs them.
Peak memory is the growth of the process's peak resident set over one step in a fresh child
process (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA). Encode+decode is inference at
``--infer-batch`` inputs: ``sae.decode(sae.encode(x))``.

Only public API is used, so the same script times an older checkout (``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
from _measure import peak_rss_kib, resident_kib, sync, timed
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig

SIZES = {
    "big": dict(d_in=768, d_sae=16384, batch=4096, k=64),
    "small": dict(d_in=160, d_sae=512, batch=1024, k=11),
    "tiny": dict(d_in=32, d_sae=256, batch=64, k=4),  # a smoke test of the script itself
}
TOTAL_STEPS = 1000
SOFT_STEP = 100  # past the 1% anneal: alpha at its floor, still the soft phase
HARD_STEP = TOTAL_STEPS - 1
TARGETS = {
    "big": {
        "soft_phase_over_topk": 1.25,
        "hard_phase_over_topk": 1.0,
        "encode_decode_over_topk": 0.75,
    },
    "small": {"soft_phase_over_topk": 1.5},
}


# SoftSAE's k_max in multiples of k (None: the package default, 2k); set by --k-max-factor.
K_MAX_FACTOR: float | None = None


def build(kind: str, size: dict, device: torch.device):
    torch.manual_seed(0)
    if kind == "soft":
        cfg = SoftTrainingSAEConfig(
            d_in=size["d_in"],
            d_sae=size["d_sae"],
            k=size["k"],
            k_max=None if K_MAX_FACTOR is None else K_MAX_FACTOR * size["k"],
            total_training_steps=TOTAL_STEPS,
            device=str(device),
        )
        return SoftTrainingSAE(cfg).to(device)
    cfg = TopKTrainingSAEConfig(
        d_in=size["d_in"], d_sae=size["d_sae"], k=size["k"], device=str(device)
    )
    return TopKTrainingSAE(cfg).to(device)


class Stepper:
    """One SAE with its Adam optimizer; ``step(i)`` runs one training step at index ``i``."""

    def __init__(self, sae, x: torch.Tensor, autocast: str, compile_step: bool):
        self.sae, self.x = sae, x
        self.dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4)
        self.forward = (
            torch.compile(sae.training_forward_pass) if compile_step else sae.training_forward_pass
        )
        self.autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if autocast == "bf16"
            else nullcontext()
        )

    def step(self, index: int) -> None:
        with self.autocast:
            out = self.forward(
                TrainStepInput(
                    sae_in=self.x,
                    coefficients={},
                    dead_neuron_mask=self.dead,
                    n_training_steps=index,
                    is_logging_step=False,
                )
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _busy_loop(stop) -> None:
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


@contextmanager
def competing_process(load: str):
    """``busy``: a single-threaded matmul loop in another process while the block runs."""
    if load != "busy":
        yield
        return
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_busy_loop, args=(stop,), daemon=True)
    proc.start()
    time.sleep(1.0)
    try:
        yield
    finally:
        stop.set()
        proc.join(timeout=10)


def time_training(
    size: dict, device: torch.device, autocast: str, compile_step: bool, repeats: int
) -> dict:
    x = torch.randn(size["batch"], size["d_in"], device=device)
    soft = Stepper(build("soft", size, device), x, autocast, compile_step)
    topk = Stepper(build("topk", size, device), x, autocast, compile_step)
    # warm-up: allocator, Adam state, and for --compile every graph (soft, hard, topk)
    for _ in range(2 if compile_step else 1):
        soft.step(SOFT_STEP)
        soft.step(HARD_STEP)
        topk.step(0)
    times: dict[str, list[float]] = {"soft_phase": [], "hard_phase": [], "topk": []}
    for i in range(repeats):
        times["soft_phase"].append(timed(lambda i=i: soft.step(SOFT_STEP + 1 + i), device))
        times["topk"].append(timed(lambda i=i: topk.step(1 + i), device))
        times["hard_phase"].append(timed(lambda: soft.step(HARD_STEP), device))
    med = {name: statistics.median(values) for name, values in times.items()}
    return {
        "median_s": {name: round(value, 4) for name, value in med.items()},
        "soft_phase_over_topk": round(med["soft_phase"] / med["topk"], 3),
        "hard_phase_over_topk": round(med["hard_phase"] / med["topk"], 3),
    }


def time_encode_decode(size: dict, device: torch.device, batch: int, repeats: int) -> dict:
    x = torch.randn(batch, size["d_in"], device=device)
    saes = {kind: build(kind, size, device).eval() for kind in ("soft", "topk")}
    times: dict[str, list[float]] = {kind: [] for kind in saes}
    with torch.no_grad():
        for sae in saes.values():
            sae.decode(sae.encode(x))
        for _ in range(repeats):
            for kind, sae in saes.items():
                times[kind].append(timed(lambda sae=sae: sae.decode(sae.encode(x)), device))
    med = {kind: statistics.median(values) for kind, values in times.items()}
    return {
        "batch": batch,
        "median_s": {kind: round(value, 4) for kind, value in med.items()},
        "encode_decode_over_topk": round(med["soft"] / med["topk"], 3),
    }


def peak_memory(size_name: str, kind: str, phase: str, device: torch.device, autocast: str) -> int:
    """Peak extra bytes of one training step (after a warm-up step)."""
    if device.type == "cuda":
        size = SIZES[size_name]
        x = torch.randn(size["batch"], size["d_in"], device=device)
        stepper = Stepper(build(kind, size, device), x, autocast, False)
        index = HARD_STEP if phase == "hard" else SOFT_STEP
        stepper.step(index)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        stepper.step(index + (0 if phase == "hard" else 1))
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure-memory",
            size_name,
            kind,
            phase,
            "--autocast",
            autocast,
            *([] if K_MAX_FACTOR is None else ["--k-max-factor", str(K_MAX_FACTOR)]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def _measure_memory_child(size_name: str, kind: str, phase: str, autocast: str) -> None:
    size = SIZES[size_name]
    torch.set_num_threads(1)
    x = torch.randn(size["batch"], size["d_in"])
    stepper = Stepper(build(kind, size, torch.device("cpu")), x, autocast, False)
    index = HARD_STEP if phase == "hard" else SOFT_STEP
    stepper.step(index)  # Adam state and caches exist from here on
    before = resident_kib()
    stepper.step(index + (0 if phase == "hard" else 1))
    # The peak covers the warm-up step too, which is the same step: this is a step's peak above
    # the state it starts from (weights, Adam moments, the batch).
    print(max(0, peak_rss_kib() - before) * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size",
        nargs="+",
        choices=sorted(SIZES),
        default=["big", "small"],
        help="default: big small",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--load", nargs="+", choices=["idle", "busy"], default=["idle"])
    parser.add_argument("--autocast", nargs="+", choices=["none", "bf16"], default=["none"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--infer-batch", type=int, default=1024)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--k-max-factor",
        type=float,
        default=None,
        help="SoftSAE's k_max = factor x k (default: the package's, 2)",
    )
    parser.add_argument(
        "--measure-memory", nargs=3, metavar=("SIZE", "KIND", "PHASE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    global K_MAX_FACTOR
    K_MAX_FACTOR = args.k_max_factor
    if args.measure_memory:
        _measure_memory_child(*args.measure_memory, args.autocast[0])
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    results = []
    for size_name in args.size:
        size = SIZES[size_name]
        for autocast in args.autocast:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for load in args.load:
                    modes = [False, True] if args.compile else [False]
                    for compile_step in modes:
                        with competing_process(load):
                            row = {
                                "size": size_name,
                                **size,
                                "autocast": autocast,
                                "threads": threads,
                                "load": load,
                                "compiled": compile_step,
                                **time_training(size, device, autocast, compile_step, args.repeats),
                            }
                            if not compile_step and autocast == "none":
                                row["encode_decode"] = time_encode_decode(
                                    size, device, args.infer_batch, args.repeats
                                )
                        results.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
            if not args.no_memory:
                memory = {
                    f"{kind}_{phase}": round(
                        peak_memory(size_name, kind, phase, device, autocast) / 2**20, 1
                    )
                    for kind, phase in (("soft", "soft"), ("soft", "hard"), ("topk", "soft"))
                }
                results.append(
                    {
                        "size": size_name,
                        "autocast": autocast,
                        "peak_step_memory_mib": {
                            "soft_phase": memory["soft_soft"],
                            "hard_phase": memory["soft_hard"],
                            "topk": memory["topk_soft"],
                        },
                    }
                )
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": str(device),
                "torch": torch.__version__,
                "soft_k_max_factor": K_MAX_FACTOR or 2.0,
                "results": results,
                "targets": TARGETS,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
