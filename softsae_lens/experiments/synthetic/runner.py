"""Process orchestration: train and evaluate every (regime, seed, SAE) and assemble the result.

:func:`run_job` trains one SAE with :func:`~sae_lens.synthetic.train_toy_sae` and evaluates its
inference form; :func:`run_jobs` runs jobs in this process or in a pool of spawned worker
processes of ``threads`` PyTorch threads each; :func:`run_experiment` builds the jobs, runs them
and returns the JSON-able result (summary and acceptance from :mod:`.report`).

Depends on :mod:`.data`, :mod:`.settings`, :mod:`.arms`, :mod:`.metrics` and :mod:`.report`:
nothing about Markdown, plots or the command line.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.synthetic import train_toy_sae
from tqdm.auto import tqdm

from softsae_lens.experiments.synthetic.arms import (
    MAIN_VARIANTS,
    SAE_LABELS,
    SOFT_CONFIG_FIELDS,
    build_sae,
    to_inference,
)
from softsae_lens.experiments.synthetic.data import (
    DATA_SEED_OFFSET,
    ESTIMATE_SEED_OFFSET,
    EVAL_SEED_OFFSET,
    Regime,
    bucket_edges,
    build_data,
    l0_distribution,
    sample_true_l0,
)
from softsae_lens.experiments.synthetic.metrics import evaluate
from softsae_lens.experiments.synthetic.report import acceptance, aggregate
from softsae_lens.experiments.synthetic.settings import Settings

MAIN_TITLE = "SoftSAE vs TopK vs BatchTopK on synthetic data with known true L0"


@dataclass
class SeedRun:
    """Every SAE of one (regime, seed)."""

    regime: str
    seed: int
    true_mean_l0: float
    k: int
    metrics: dict[str, dict[str, Any]]
    wall_s: dict[str, float]
    # Per SoftSAE variant, a subsample of (true L0, k_hat, realised L0) for plotting.
    scatter: dict[str, dict[str, list[float]]]


@dataclass
class Job:
    """One SAE to train and evaluate: ``spec`` is ``{"kind": ..., **config overrides}``."""

    regime: Regime
    seed: int
    name: str
    spec: dict[str, Any]
    settings: Settings
    edges: list[int]


@dataclass
class JobResult:
    job: Job
    true_mean_l0: float
    metrics: dict[str, Any]
    wall_s: float
    scatter: dict[str, list[float]]


def run_job(job: Job, n_scatter: int = 3000) -> JobResult:
    """Train and evaluate one SAE. Deterministic given the job: the ground truth, the
    training batches and the evaluation inputs depend only on (regime, seed), so every SAE
    of a seed sees the same data whichever process runs it."""
    regime, seed, settings = job.regime, job.seed, job.settings
    torch.manual_seed(seed)
    feature_dict, generator = build_data(regime, seed)
    true_l0, _ = sample_true_l0(generator, 100_000, seed + ESTIMATE_SEED_OFFSET)
    true_mean = float(true_l0.double().mean())
    spec = dict(job.spec)
    kind = spec.pop("kind")
    torch.manual_seed(seed)
    sae = build_sae(kind, regime, true_mean, settings, **spec)
    torch.manual_seed(seed + DATA_SEED_OFFSET)  # the same batches for every SAE of this seed
    start = time.perf_counter()
    train_toy_sae(
        sae,
        feature_dict,
        generator,
        training_samples=settings.training_samples,
        batch_size=settings.batch_size,
        lr=settings.lr,
        lr_warm_up_steps=settings.lr_warm_up_steps,
        lr_decay_steps=settings.lr_decay_steps,
    )
    wall = time.perf_counter() - start
    inference = to_inference(sae)
    metrics, stats = evaluate(
        inference, feature_dict, generator, seed + EVAL_SEED_OFFSET, settings.n_eval, job.edges
    )
    metrics["kind"] = kind
    metrics["k"] = sae.cfg.k
    metrics["overrides"] = spec
    scatter: dict[str, list[float]] = {}
    if kind == "soft":
        metrics["k_max"] = sae.cfg.k_max
        metrics["soft_config"] = {
            f.name: getattr(sae.cfg, f.name)
            for f in dataclasses.fields(sae.cfg)
            if f.name in SOFT_CONFIG_FIELDS
        }
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(stats["true_l0"]), generator=g)[:n_scatter]
        scatter = {
            "true_l0": stats["true_l0"][idx].tolist(),
            "k_hat": [round(v, 3) for v in stats["k_hat"][idx].tolist()],
            "l0": stats["l0"][idx].tolist(),
        }
    return JobResult(job, true_mean, metrics, wall, scatter)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_pool(jobs: list[Job], workers: int, threads: int, bar: tqdm) -> list[JobResult]:
    import multiprocessing as mp

    # Workers' own progress bars would interleave; tqdm reads TQDM_DISABLE on import.
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,))
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved
    results = []
    with pool:
        for result in pool.imap_unordered(run_job, jobs):
            results.append(result)
            bar.set_postfix(
                regime=result.job.regime.name, seed=result.job.seed, sae=result.job.name
            )
            bar.update()
        pool.close()
        pool.join()
    return results


def run_jobs(jobs: list[Job], workers: int, threads: int, progress: bool = True) -> list[JobResult]:
    """Run jobs in this process (``workers <= 1``) or in a pool of spawned processes.

    Each process uses ``threads`` intra-op threads. One thread per process is the default:
    on a 2-core machine shared with other work, PyTorch's thread pool spin-waits for busy
    cores, and a 2-thread step measured 30x slower than a 1-thread one under load.
    Results come back in the order of ``jobs``.
    """
    bar = tqdm(total=len(jobs), desc="SAEs trained", disable=not progress)
    results: list[JobResult] = []
    if workers <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in jobs:
                bar.set_postfix(regime=job.regime.name, seed=job.seed, sae=job.name)
                results.append(run_job(job))
                bar.update()
        finally:
            torch.set_num_threads(previous)
    else:
        results = _run_in_pool(jobs, workers, threads, bar)
    bar.close()
    by_key = {(r.job.regime.name, r.job.seed, r.job.name): r for r in results}
    return [by_key[(j.regime.name, j.seed, j.name)] for j in jobs]


def group_runs(results: list[JobResult]) -> dict[str, list[SeedRun]]:
    """Job results grouped into one :class:`SeedRun` per (regime, seed), per regime."""
    runs: dict[str, dict[int, SeedRun]] = {}
    for r in results:
        by_seed = runs.setdefault(r.job.regime.name, {})
        run = by_seed.get(r.job.seed)
        if run is None:
            k = max(1, round(r.true_mean_l0))
            run = by_seed[r.job.seed] = SeedRun(
                r.job.regime.name, r.job.seed, r.true_mean_l0, k, {}, {}, {}
            )
        run.metrics[r.job.name] = r.metrics
        run.wall_s[r.job.name] = r.wall_s
        if r.scatter:
            run.scatter[r.job.name] = r.scatter
    return {name: list(by_seed.values()) for name, by_seed in runs.items()}


def describe_regime(
    regime: Regime, edges: list[int], true_l0: torch.Tensor, mode: torch.Tensor
) -> dict[str, Any]:
    """The regime's spec, bucket edges and true-L0 distribution, as stored in the JSON."""
    return {
        "name": regime.name,
        "description": regime.describe(),
        "spec": dataclasses.asdict(regime),
        "bucket_edges": edges[:-1],
        "true_l0_distribution": l0_distribution(true_l0, mode, regime),
    }


def run_experiment(
    settings: Settings,
    variants: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    title: str = MAIN_TITLE,
    command: str = "",
    progress: bool = True,
    workers: int = 1,
    threads: int = 1,
) -> tuple[dict[str, Any], dict[str, list[SeedRun]]]:
    """Train and evaluate every (regime, seed, SAE); returns the JSON-able result and the runs.

    ``variants`` maps a name to ``{"kind": "soft" | "topk" | "batchtopk", **config overrides}``;
    by default :data:`~.arms.MAIN_VARIANTS`.
    """
    start = time.perf_counter()
    if variants is None:
        variants = MAIN_VARIANTS
    edges_by_regime: dict[str, list[int]] = {}
    regimes_out = []
    for regime in settings.regimes:
        _, generator = build_data(regime, settings.seeds[0])
        true_l0, mode = sample_true_l0(generator, 100_000, ESTIMATE_SEED_OFFSET)
        edges_by_regime[regime.name] = bucket_edges(true_l0)
        regimes_out.append(describe_regime(regime, edges_by_regime[regime.name], true_l0, mode))
    jobs = [
        Job(regime, seed, name, spec, settings, edges_by_regime[regime.name])
        for regime in settings.regimes
        for seed in settings.seeds
        for name, spec in variants.items()
    ]
    results = run_jobs(jobs, workers=workers, threads=threads, progress=progress)
    runs = group_runs(results)
    summary = {name: aggregate(rs) for name, rs in runs.items()}
    for name, agg in summary.items():
        for sae_name in agg:
            agg[sae_name]["kind"] = runs[name][0].metrics[sae_name]["kind"]
    names = list(next(iter(summary.values())))
    result: dict[str, Any] = {
        "title": title,
        "command": command,
        "settings": settings.to_dict(),
        "labels": {n: (labels or SAE_LABELS).get(n, n) for n in names},
        "regimes": regimes_out,
        "summary": summary,
        "acceptance": acceptance(summary),
        "per_seed": [
            {
                "regime": r.regime,
                "seed": r.seed,
                "true_mean_l0": r.true_mean_l0,
                "k": r.k,
                "train_wall_s": r.wall_s,
                "metrics": r.metrics,
                "scatter": r.scatter,
            }
            for rs in runs.values()
            for r in rs
        ],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "workers": workers,
            "threads_per_worker": threads,
        },
    }
    result["wall_s"] = time.perf_counter() - start
    return result, runs
