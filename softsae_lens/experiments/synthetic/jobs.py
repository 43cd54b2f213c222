"""One job: train and evaluate the SAEs of one (regime, seed).

:func:`run_job` trains every variant of a :class:`Job` and evaluates its inference form:

* on a toy regime (:class:`~.data.Regime`) with :func:`~sae_lens.synthetic.train_toy_sae`,
  reseeding so that every SAE of a seed sees the same batches (cheap data, so a toy job
  usually holds one variant and jobs spread over worker processes);
* on a realistic regime (:class:`~.realistic.RealisticRegime`) through SAELens's
  :class:`~sae_lens.synthetic.SyntheticSAERunner`, the path SAELens users take, on a training
  stream recorded once per seed and replayed to every variant (generating it costs more than
  training, so a realistic job holds all the variants of its seed). The stream can be cached
  on disk (``cache_dir``) for later runs.

Depends on :mod:`.data`, :mod:`.realistic`, :mod:`.settings`, :mod:`.arms`, :mod:`.metrics`
and :mod:`.hierarchy_eval`: nothing about worker processes, reports or plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sae_lens
import torch
from sae_lens import LoggingConfig, TrainingSAE
from sae_lens.synthetic import (
    SyntheticModel,
    SyntheticSAERunner,
    SyntheticSAERunnerConfig,
    train_toy_sae,
)

from softsae_lens.experiments.synthetic.arms import (
    SOFT_CONFIG_FIELDS,
    build_sae,
    target_l0,
    to_inference,
)
from softsae_lens.experiments.synthetic.data import (
    DATA_SEED_OFFSET,
    ESTIMATE_SEED_OFFSET,
    EVAL_SEED_OFFSET,
    PILOT_SEED_OFFSET,
    Regime,
    build_data,
    sample_true_l0,
)
from softsae_lens.experiments.synthetic.hierarchy_eval import hierarchy_diagnostics
from softsae_lens.experiments.synthetic.metrics import correlations, evaluate
from softsae_lens.experiments.synthetic.realistic import (
    RealisticRegime,
    RecordedActivationGenerator,
    build_model,
    width_features,
    width_l0,
)
from softsae_lens.experiments.synthetic.realistic import sample_true_l0 as sample_realistic_l0
from softsae_lens.experiments.synthetic.settings import RealisticSettings, Settings
from softsae_lens.training.run_length import configure_runner

N_SCATTER = 3000  # (true L0, k_hat, realised L0) points kept per SoftSAE for the plots
N_PILOT = 1024  # inputs of the pilot batch that starts JumpReLU's and matching pursuit's thresholds
# The kinds whose starting threshold is set on a pilot batch.
_PILOTED = ("jumprelu", "matching_pursuit")


@torch.no_grad()
def pilot_inputs(feature_dict: Any, generator: Any, seed: int) -> torch.Tensor:
    """``N_PILOT`` inputs of the training distribution from their own RNG stream (neither the
    training stream nor the evaluation inputs)."""
    torch.manual_seed(seed + PILOT_SEED_OFFSET)
    return feature_dict(generator.sample(N_PILOT))


@dataclass
class Job:
    """The SAEs of one (regime, seed) to train and evaluate: ``variants`` maps a name to
    ``{"kind": ..., **config overrides}``."""

    regime: Regime | RealisticRegime
    seed: int
    variants: dict[str, dict[str, Any]]
    settings: Settings | RealisticSettings
    edges: list[int]
    cache_dir: Path | None = None


@dataclass
class JobResult:
    """One trained and evaluated SAE."""

    regime: str
    seed: int
    name: str
    true_mean_l0: float
    k: int
    metrics: dict[str, Any]
    wall_s: float
    scatter: dict[str, list[float]]


def run_job(job: Job) -> list[JobResult]:
    """Train and evaluate every variant of ``job``. Deterministic given the job."""
    if isinstance(job.regime, RealisticRegime):
        return _run_realistic(job)
    return [_run_toy(job, name, spec) for name, spec in job.variants.items()]


def _finish(
    job: Job, name: str, spec: dict[str, Any], sae: TrainingSAE[Any], metrics, stats, target, wall
) -> JobResult:
    """Records what the variant was and, for SoftSAE, its config and a scatter subsample."""
    spec = dict(spec)
    kind = spec.pop("kind")
    metrics.update(kind=kind, k=getattr(sae.cfg, "k", None), overrides=spec)
    scatter: dict[str, list[float]] = {}
    if kind == "soft":
        metrics["k_max"] = sae.cfg.k_max
        metrics["soft_config"] = {
            f.name: getattr(sae.cfg, f.name)
            for f in dataclasses.fields(sae.cfg)
            if f.name in SOFT_CONFIG_FIELDS or f.name == "train_code"
        }
        g = torch.Generator().manual_seed(job.seed)
        idx = torch.randperm(len(stats["true_l0"]), generator=g)[:N_SCATTER]
        scatter = {
            "true_l0": stats["true_l0"][idx].tolist(),
            "k_hat": [round(v, 3) for v in stats["k_hat"][idx].tolist()],
            "l0": stats["l0"][idx].tolist(),
        }
    # Where the SAE's L0 at inference landed against the L0 it was set to reach.
    goal = target_l0(kind, target, spec.get("k_offset", 0))
    metrics["target_l0"] = goal
    metrics["l0_off_target_pct"] = 100.0 * (metrics["mean_l0"] / goal - 1.0)
    if kind == "matching_pursuit":
        metrics["final_residual_threshold"] = float(sae.cfg.residual_threshold)
        metrics["max_iterations"] = sae.cfg.max_iterations
    if kind == "jumprelu":
        metrics["initial_threshold"] = float(sae.cfg.jumprelu_init_threshold)
    k = max(1, round(target))
    return JobResult(job.regime.name, job.seed, name, target, k, metrics, wall, scatter)


def _run_toy(job: Job, name: str, spec: dict[str, Any]) -> JobResult:
    regime, seed, settings = job.regime, job.seed, job.settings
    assert isinstance(regime, Regime) and isinstance(settings, Settings)
    torch.manual_seed(seed)
    feature_dict, generator = build_data(regime, seed)
    true_l0, _ = sample_true_l0(generator, 100_000, seed + ESTIMATE_SEED_OFFSET)
    true_mean = float(true_l0.double().mean())
    overrides = {k: v for k, v in spec.items() if k != "kind"}
    pilot = pilot_inputs(feature_dict, generator, seed) if spec["kind"] in _PILOTED else None
    torch.manual_seed(seed)
    sae = build_sae(spec["kind"], regime, true_mean, settings, pilot=pilot, **overrides)
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
    metrics, stats = evaluate(
        to_inference(sae),
        feature_dict,
        generator,
        seed + EVAL_SEED_OFFSET,
        settings.n_eval,
        job.edges,
    )
    return _finish(job, name, spec, sae, metrics, stats, true_mean, wall)


def _stream_path(job: Job, n_batches: int, batch_size: int) -> Path | None:
    if job.cache_dir is None:
        return None
    key = json.dumps(
        [dataclasses.asdict(job.regime), job.seed, n_batches, batch_size, sae_lens.__version__],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return job.cache_dir / f"{job.regime.name}_seed{job.seed}_{n_batches}x{batch_size}_{digest}.pt"


def recorded_stream(
    job: Job, model: SyntheticModel, n_batches: int, batch_size: int
) -> RecordedActivationGenerator:
    """The seed's training stream: from the cache when there, else sampled (and cached)."""
    stream = RecordedActivationGenerator(model.activation_generator)
    path = _stream_path(job, n_batches, batch_size)
    if path is not None and path.is_file():
        stream.batches, stream.batch_size = torch.load(path), batch_size
        return stream
    torch.manual_seed(job.seed + DATA_SEED_OFFSET)
    stream.record(n_batches, batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(stream.batches, path)
    return stream


def _runner_config(model: SyntheticModel, sae: TrainingSAE[Any], settings: RealisticSettings):
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=model.cfg,
        sae=sae.cfg,
        training_samples=settings.total_steps * settings.batch_size,
        batch_size=settings.batch_size,
        lr=settings.lr,
        lr_warm_up_steps=settings.lr_warm_up_steps,
        lr_decay_steps=settings.lr_decay_steps,
        dead_feature_window=settings.dead_feature_window,
        output_path=None,
        checkpoint_path=None,
        eval_samples=0,
        run_final_eval=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return configure_runner(cfg)


def _run_realistic(job: Job) -> list[JobResult]:
    regime, seed, settings = job.regime, job.seed, job.settings
    assert isinstance(regime, RealisticRegime) and isinstance(settings, RealisticSettings)
    model = build_model(regime, seed)
    _, frequencies = sample_realistic_l0(model, 100_000, seed + ESTIMATE_SEED_OFFSET)
    target = width_l0(frequencies, regime.d_sae)  # k: the true L0 the width can hold
    width = width_features(frequencies, regime.d_sae)
    stream = recorded_stream(job, model, settings.total_steps, settings.batch_size)
    replay = SyntheticModel(
        model.cfg,
        feature_dict=model.feature_dict,
        activation_generator=stream,
        hierarchy=model.hierarchy,
        correlation_matrix=model.correlation_matrix,
    )
    pilot = None
    if any(spec["kind"] in _PILOTED for spec in job.variants.values()):
        pilot = pilot_inputs(model.feature_dict, model.activation_generator, seed)
    results = []
    for name, spec in job.variants.items():
        overrides = {k: v for k, v in spec.items() if k != "kind"}
        torch.manual_seed(seed)
        sae = build_sae(spec["kind"], regime, target, settings, pilot=pilot, **overrides)
        stream.rewind()
        start = time.perf_counter()
        SyntheticSAERunner(
            _runner_config(model, sae, settings), override_synthetic_model=replay, override_sae=sae
        ).run()
        wall = time.perf_counter() - start
        inference = to_inference(sae)
        metrics, stats = evaluate(
            inference,
            model.feature_dict,
            model.activation_generator,
            seed + EVAL_SEED_OFFSET,
            settings.n_eval,
            job.edges,
            batch_size=settings.eval_batch_size,
        )
        metrics["true_width_l0"] = target
        if "k_hat" in stats:
            # The width holds only the d_sae most frequent features; k_hat can know the rest only
            # through the residual they leave, so its tracking is also scored on these alone.
            width_true_l0 = (stats["features"][:, width] != 0).sum(-1)
            metrics["corr_k_hat_vs_width_l0"] = correlations(stats["k_hat"], width_true_l0)
        metrics["hierarchy"] = hierarchy_diagnostics(
            inference.W_dec.detach(),
            model.feature_dict.feature_vectors.detach(),
            stats["latents"],
            stats["features"],
            model.hierarchy.roots if model.hierarchy is not None else None,
            width,
        )
        results.append(_finish(job, name, spec, sae, metrics, stats, target, wall))
    return results
