"""Data-parallel SAE training: tokens/s on 1 vs N processes and the all-reduce overhead, as JSON.

    python benchmarks/bench_distributed.py [--processes 1 2] [--device cpu|cuda] [--architecture soft]
                                           [--d-in 768] [--d-sae 16384] [--batch 4096] [--steps 30]
                                           [--repeats 3] [--threads-per-process N]

Each configuration trains with SAELens's trainer for ``--steps`` steps of a global batch of
``--batch`` activations (random, pre-generated on the device, so that only the SAE is timed):
one process runs SAELens's ``SAETrainer``; N processes run ``DistributedSAETrainer`` (DDP
gradient all-reduce plus the per-step statistics) on ``batch / N`` activations each. A step's time
is the interval between the trainer's requests for data, after ``--warmup`` steps; medians
over steps, then over ``--repeats`` runs.

The all-reduce overhead is measured, not modelled: the same N processes, at the same time and
with the same per-process batch, also train with plain ``SAETrainer`` (no communication at
all), and ``allreduce_overhead_fraction = 1 - local_step / distributed_step``. On a CPU each
process gets ``cpu_count / N`` threads unless ``--threads-per-process`` says otherwise (Gloo);
with ``--device cuda`` process r uses ``cuda:r`` (NCCL). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from typing import Any

import torch
import torch.multiprocessing as mp
from _measure import sync

ARCHITECTURES = ("soft", "topk", "batchtopk", "jumprelu", "standard")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TimedBatches:
    """Cycles through pre-generated batches and records when the trainer asks for each one."""

    def __init__(self, pool: torch.Tensor, batch: int):
        self.pool, self.batch, self.index, self.stamps = pool, batch, 0, []

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        sync(self.pool.device)
        self.stamps.append(time.perf_counter())
        start = (self.index * self.batch) % self.pool.shape[0]
        self.index += 1
        return self.pool[start : start + self.batch]

    def step_seconds(self, warmup: int) -> float:
        gaps = [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)][warmup:]
        return statistics.median(gaps)


def _sae(architecture: str, args: argparse.Namespace, device: str):
    from sae_lens.registry import get_sae_training_class

    import softsae_lens  # noqa: F401  (registers "soft")

    sae_class, cfg_class = get_sae_training_class(architecture)
    kwargs: dict[str, Any] = dict(d_in=args.d_in, d_sae=args.d_sae, device=device)
    if architecture in ("soft", "topk", "batchtopk"):
        kwargs["k"] = args.k
    if architecture == "soft":
        kwargs["total_training_steps"] = args.steps
    torch.manual_seed(0)
    return sae_class(cfg_class(**kwargs)).to(device)


def _train(args: argparse.Namespace, device: str, batch: int, distributed: bool) -> float:
    """Seconds per step (median after warm-up) of SAELens's trainer at ``batch`` per process."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from softsae_lens.training.distributed import DistributedSAETrainer, init_distributed

    sae = _sae(args.architecture, args, device)
    generator = torch.Generator(device=device).manual_seed(1)
    pool = torch.randn(4 * batch, args.d_in, device=device, generator=generator)
    data = _TimedBatches(pool, batch)
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    cfg = SAETrainerConfig(
        total_training_samples=args.steps * batch * world,
        train_batch_size_samples=batch * world,
        device=device,
        lr_end=3e-4,
        logger=LoggingConfig(log_to_wandb=False),
    )
    if distributed:
        context = init_distributed(device)
        assert context is not None
        trainer: SAETrainer = DistributedSAETrainer(
            cfg=cfg, sae=sae, data_provider=data, context=context
        )
    else:
        # Keeps the per-process batch and the trainer's counters of a distributed process.
        cfg.total_training_samples = args.steps * batch
        cfg.train_batch_size_samples = batch
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=data)
    trainer.fit()
    return data.step_seconds(args.warmup)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(_threads(args, world))
    batch = args.batch // world
    steps, local_steps = [], []
    for _ in range(args.repeats):
        steps.append(_train(args, device, batch, distributed=world > 1))
        if world > 1:
            # Same processes, same per-process batch, no communication; alternated with the
            # distributed runs so that load from elsewhere hits both alike.
            local_steps.append(_train(args, device, batch, distributed=False))
    result = {"step_s": statistics.median(steps)}
    if local_steps:
        result["local_step_s"] = statistics.median(local_steps)
    queue.put((rank, result))


def _threads(args: argparse.Namespace, world: int) -> int:
    return args.threads_per_process or max(1, (os.cpu_count() or 1) // world)


def _measure(world: int, args: argparse.Namespace) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _worker,
        args=(world, _free_port(), args, queue),
        nprocs=world,
        start_method="spawn",
        join=True,
    )
    per_rank = dict(queue.get() for _ in range(world))
    step = max(r["step_s"] for r in per_rank.values())
    entry: dict[str, Any] = {
        "processes": world,
        "threads_per_process": _threads(args, world) if args.device == "cpu" else None,
        "step_ms": round(step * 1e3, 3),
        "tokens_per_s": round(args.batch / step, 1),
    }
    if world > 1:
        local = max(r["local_step_s"] for r in per_rank.values())
        entry["local_step_ms"] = round(local * 1e3, 3)
        entry["allreduce_overhead_fraction"] = round(max(0.0, 1 - local / step), 4)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--architecture", default="soft", choices=ARCHITECTURES)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096, help="global batch, in activations")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians")
    parser.add_argument(
        "--threads-per-process",
        type=int,
        default=0,
        help="CPU threads per process; 0 (default) splits the machine: cpu_count // processes",
    )
    args = parser.parse_args()
    for name in ("d_in", "d_sae", "k", "batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.repeats <= 0:
        parser.error(f"--repeats must be positive, got {args.repeats}")
    if args.threads_per_process < 0:
        parser.error(f"--threads-per-process must be >= 0, got {args.threads_per_process}")
    if args.steps < args.warmup + 3:
        parser.error(f"--steps must be at least --warmup + 3 = {args.warmup + 3}, got {args.steps}")
    for world in args.processes:
        if world <= 0 or args.batch % world:
            parser.error(
                f"--processes {world}: must be positive and divide --batch {args.batch} "
                "(the global batch is split evenly across processes)"
            )
        if args.device == "cuda" and world > torch.cuda.device_count():
            parser.error(
                f"--processes {world} with --device cuda needs {world} GPUs; "
                f"{torch.cuda.device_count()} visible"
            )
    results = [_measure(world, args) for world in args.processes]
    base = next((r for r in results if r["processes"] == 1), None)
    if base is not None:
        for entry in results:
            entry["speedup_vs_1"] = round(entry["tokens_per_s"] / base["tokens_per_s"], 3)
    print(
        json.dumps(
            {
                "device": args.device,
                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                "cpu_count": os.cpu_count(),
                "architecture": args.architecture,
                "d_in": args.d_in,
                "d_sae": args.d_sae,
                "global_batch": args.batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
