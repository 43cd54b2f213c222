"""Process orchestration: run every job, in this process or in worker processes, and assemble
the JSON-able result.

:func:`run_jobs` runs :func:`~.jobs.run_job` over the jobs in this process or in a pool of
spawned worker processes of ``threads`` PyTorch threads each; :func:`run_experiment` describes
the regimes, builds the jobs, runs them and returns the result (summary and acceptance from
:mod:`.summary`).

Depends on :mod:`.data`, :mod:`.realistic`, :mod:`.settings`, :mod:`.arms`, :mod:`.jobs` and
:mod:`.summary`: nothing about Markdown, plots or the command line.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softsae_lens.experiments.synthetic.arms import MAIN_VARIANTS, REALISTIC_VARIANTS, SAE_LABELS
from softsae_lens.experiments.synthetic.data import (
    ESTIMATE_SEED_OFFSET,
    Regime,
    bucket_edges,
    build_data,
    l0_distribution,
    sample_true_l0,
)
from softsae_lens.experiments.synthetic.jobs import Job, JobResult, run_job
from softsae_lens.experiments.synthetic.realistic import RealisticRegime, build_model, width_l0
from softsae_lens.experiments.synthetic.realistic import sample_true_l0 as sample_realistic_l0
from softsae_lens.experiments.synthetic.settings import RealisticSettings, Settings
from softsae_lens.experiments.synthetic.summary import acceptance, aggregate

MAIN_TITLE = "SoftSAE against SAELens's architectures on synthetic data with known true L0"


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


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # The soft code's weights far below the threshold are subnormal floats, and on x86 CPUs
    # every matmul touching them takes a slow path: a SoftSAE step measured 11x slower
    # (453 vs 41 ms at d_in 128, d_sae 512). Flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)


def _job_label(job: Job) -> str:
    return ",".join(job.variants)


def _run_in_pool(jobs: list[Job], workers: int, threads: int, bar: tqdm) -> list[list[JobResult]]:
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
    results: list[list[JobResult]] = []
    with pool:
        for result in pool.imap_unordered(run_job, jobs):
            results.append(result)
            bar.set_postfix(regime=result[0].regime, seed=result[0].seed, sae=result[0].name)
            bar.update()
        pool.close()
        pool.join()
    return results


def run_jobs(jobs: list[Job], workers: int, threads: int, progress: bool = True) -> list[JobResult]:
    """Run jobs in this process (``workers <= 1``) or in a pool of spawned processes.

    Each process uses ``threads`` intra-op threads. One thread per process is the default:
    on a 2-core machine shared with other work, PyTorch's thread pool spin-waits for busy
    cores, and a 2-thread step measured 30x slower than a 1-thread one under load.
    Results come back in the order of ``jobs`` and of their variants.
    """
    bar = tqdm(total=len(jobs), desc="jobs done", disable=not progress)
    if workers <= 1:
        previous = torch.get_num_threads()
        _init_worker(threads)
        done = []
        try:
            for job in jobs:
                bar.set_postfix(regime=job.regime.name, seed=job.seed, sae=_job_label(job))
                done.append(run_job(job))
                bar.update()
        finally:
            torch.set_num_threads(previous)
            torch.set_flush_denormal(False)  # PyTorch's default
    else:
        done = _run_in_pool(jobs, workers, threads, bar)
    bar.close()
    by_key = {(r.regime, r.seed, r.name): r for rs in done for r in rs}
    return [by_key[(j.regime.name, j.seed, name)] for j in jobs for name in j.variants]


def group_runs(results: list[JobResult]) -> dict[str, list[SeedRun]]:
    """Job results grouped into one :class:`SeedRun` per (regime, seed), per regime."""
    runs: dict[str, dict[int, SeedRun]] = {}
    for r in results:
        by_seed = runs.setdefault(r.regime, {})
        run = by_seed.get(r.seed)
        if run is None:
            run = by_seed[r.seed] = SeedRun(r.regime, r.seed, r.true_mean_l0, r.k, {}, {}, {})
        run.metrics[r.name] = r.metrics
        run.wall_s[r.name] = r.wall_s
        if r.scatter:
            run.scatter[r.name] = r.scatter
    return {name: list(by_seed.values()) for name, by_seed in runs.items()}


def describe_regime(
    regime: Regime | RealisticRegime, seed: int
) -> tuple[dict[str, Any], list[int]]:
    """The regime's spec and true-L0 distribution (100k inputs of ``seed``'s data), as stored
    in the JSON, and the true-L0 bucket edges every seed of the regime uses."""
    if isinstance(regime, RealisticRegime):
        true_l0, frequencies = sample_realistic_l0(
            build_model(regime, seed), 100_000, ESTIMATE_SEED_OFFSET
        )
        mode = torch.zeros_like(true_l0)
    else:
        _, generator = build_data(regime, seed)
        true_l0, mode = sample_true_l0(generator, 100_000, ESTIMATE_SEED_OFFSET)
    edges = bucket_edges(true_l0)
    out = {
        "name": regime.name,
        "kind": regime.kind,
        "description": regime.describe(),
        "spec": dataclasses.asdict(regime),
        "bucket_edges": edges[:-1],
        "true_l0_distribution": l0_distribution(true_l0, mode, regime),
    }
    if isinstance(regime, RealisticRegime):
        out["d_sae"] = regime.d_sae
        out["true_l0_distribution"]["width_mean"] = width_l0(frequencies, regime.d_sae)
    return out, edges


def run_experiment(
    settings: Settings,
    variants: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    title: str = MAIN_TITLE,
    command: str = "",
    progress: bool = True,
    workers: int = 1,
    threads: int = 1,
    realistic: RealisticSettings | None = None,
    realistic_variants: dict[str, dict[str, Any]] | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, list[SeedRun]]]:
    """Train and evaluate every (regime, seed, SAE); returns the JSON-able result and the runs.

    ``variants`` (toy regimes, default :data:`~.arms.MAIN_VARIANTS`) and ``realistic_variants``
    (realistic regimes, default :data:`~.arms.REALISTIC_VARIANTS`) map a name to
    ``{"kind": one of arms.SAE_KINDS, **config overrides}``. ``cache_dir`` keeps the
    realistic regimes' recorded training streams for later runs.
    """
    start = time.perf_counter()
    variants = MAIN_VARIANTS if variants is None else variants
    realistic_variants = REALISTIC_VARIANTS if realistic_variants is None else realistic_variants
    toy_out, realistic_out, jobs = [], [], []
    # The realistic jobs first: each trains every variant of its seed, the longest jobs.
    for regime in realistic.regimes if realistic is not None else []:
        described, edges = describe_regime(regime, realistic.seeds[0])
        realistic_out.append(described)
        jobs += [
            Job(regime, seed, dict(realistic_variants), realistic, edges, cache_dir)
            for seed in realistic.seeds
        ]
    for regime in settings.regimes:
        described, edges = describe_regime(regime, settings.seeds[0])
        toy_out.append(described)
        jobs += [
            Job(regime, seed, {name: spec}, settings, edges)
            for seed in settings.seeds
            for name, spec in variants.items()
        ]
    regimes_out = toy_out + realistic_out
    runs = group_runs(run_jobs(jobs, workers=workers, threads=threads, progress=progress))
    summary = {}
    for regime in regimes_out:
        rs = runs[regime["name"]]
        summary[regime["name"]] = aggregate(rs)
        for sae_name, entry in summary[regime["name"]].items():
            entry["kind"] = rs[0].metrics[sae_name]["kind"]
    names = list(dict.fromkeys(n for agg in summary.values() for n in agg))
    result: dict[str, Any] = {
        "title": title,
        "command": command,
        "settings": settings.to_dict(),
        "labels": {n: (labels or SAE_LABELS).get(n, n) for n in names},
        "regimes": regimes_out,
        "summary": summary,
        "acceptance": acceptance(summary, {r["name"]: r["kind"] for r in regimes_out}),
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
            for regime in regimes_out
            for r in runs[regime["name"]]
        ],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "workers": workers,
            "threads_per_worker": threads,
        },
    }
    if realistic is not None:
        result["realistic_settings"] = realistic.to_dict()
    result["wall_s"] = time.perf_counter() - start
    return result, runs
