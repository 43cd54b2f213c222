"""Two-process (Gloo, CPU) scenarios for tests/test_distributed.py.

``run_two_ranks(root)`` starts two processes with the environment torchrun would give them
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and each runs every
scenario below in its own working directory ``root/rank<r>`` (so relative output paths show
which rank wrote what), saving what the tests check under ``root/results``. Starting the
processes costs more than the scenarios, so they share one start.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp
from helpers import CONTEXT, D_MODEL, build_tiny_model, tiny_runner_cfg, token_dataset

WORLD = 2
GLOBAL_BATCH = 128  # tokens per step over both ranks: 8 rows of 16 tokens
ROWS = 384
STEPS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sae_cfg(architecture: str):
    """SAE configs small enough for seconds of training on the tiny model."""
    from sae_lens import TopKTrainingSAEConfig

    from softsae_lens import SoftTrainingSAEConfig

    common = dict(d_in=D_MODEL, d_sae=128, normalize_activations="expected_average_only_in")
    if architecture == "soft":
        # Trained weights are compared with one process to 1e-4: under k_budget="normalize" the
        # global mean k sums the ranks' partial sums in another order, and Adam amplifies those
        # rounding-level differences in the estimator's small gradients past that tolerance.
        # The normalize factor's global mean is checked step by step instead (k_penalty).
        return SoftTrainingSAEConfig(k=8, k_budget="penalty", **common)
    if architecture == "topk":
        return TopKTrainingSAEConfig(k=8, **common)
    raise ValueError(architecture)


OTHER_ARCHITECTURES = {
    "standard": {"normalize_activations": "covariance_whitening"},  # estimated from all ranks
    "gated": {},
    "jumprelu": {},
    "batchtopk": {"k": 8},
    "matryoshka_batchtopk": {"k": 8, "matryoshka_widths": [32, 128]},
    "abstopk": {"k": 8},
    "matching_pursuit": {},
}


def runner_cfg(architecture: str, **overrides):
    """The run both the 2-process and the 1-process reference train.

    ``activations_mixing_fraction=0`` serves activations in dataset order, so a single process
    reading :func:`interleaved_dataset` sees exactly the global batches of the two ranks.
    """
    from softsae_lens import configure_runner

    base = dict(
        sae=sae_cfg(architecture),
        training_tokens=GLOBAL_BATCH * STEPS,
        train_batch_size_tokens=GLOBAL_BATCH,
        activations_mixing_fraction=0.0,
        n_batches_for_norm_estimate=4,
        dead_feature_window=5,
        feature_sampling_window=10,
        n_checkpoints=1,
    )
    base.update(overrides)
    return configure_runner(tiny_runner_cfg(base.pop("output_path", None), **base))


def interleaved_dataset(n_rows: int = ROWS):
    """The rows one process must read to see the two ranks' global batches, in order.

    Rank r reads the r-th contiguous half of ``token_dataset`` (``split_dataset_by_node``),
    ``rows_per_rank_batch`` rows per step; step s of the global batch is rank 0's rows of step s
    followed by rank 1's.
    """
    from datasets import concatenate_datasets

    full = token_dataset(n_rows)
    half = n_rows // WORLD
    per_rank_step = GLOBAL_BATCH // WORLD // CONTEXT
    pieces = []
    for start in range(0, half, per_rank_step):
        for rank in range(WORLD):
            lo = rank * half + start
            pieces.append(full.select(range(lo, min(lo + per_rank_step, (rank + 1) * half))))
    return concatenate_datasets(pieces)


def _train(architecture: str, rank: int, **overrides):
    from softsae_lens import DistributedSAETrainingRunner

    model = build_tiny_model()
    # Different seeds per rank: DDP must start every rank from rank 0's initialisation.
    torch.manual_seed(rank)
    runner = DistributedSAETrainingRunner(
        runner_cfg(architecture, **overrides),
        override_model=model,
        override_dataset=token_dataset(ROWS),
    )
    runner.initial_state = {k: v.detach().clone() for k, v in runner.sae.state_dict().items()}
    sae = runner.run()
    return runner, sae


def _error_of(fn) -> str:
    try:
        fn()
    except Exception as error:  # noqa: BLE001  (the message is the result)
        return f"{type(error).__name__}: {error}"
    return "no error"


def k_penalty_sae(k_budget: str = "penalty"):
    """The SoftSAE whose k budget (d) checks, identical on both ranks and in the reference."""
    from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig

    torch.manual_seed(0)
    sae = SoftTrainingSAE(
        SoftTrainingSAEConfig(
            d_in=D_MODEL, d_sae=64, k=4, total_training_steps=100, k_budget=k_budget
        )
    )
    # A trained-looking estimator: k_hat then varies with the input (at init it is k everywhere).
    torch.nn.init.normal_(sae.W_k_out, std=0.3)
    return sae


def k_penalty_step(sae, x: torch.Tensor):
    """One soft-phase training forward pass (step 50 of 100) with no dead latents."""
    from sae_lens.saes.sae import TrainStepInput

    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=50,
            is_logging_step=False,
        )
    )


def _scenarios(rank: int, root: Path) -> dict:
    from softsae_lens import DistributedSAETrainingRunner
    from softsae_lens.training.distributed import install_global_batch_sums

    results: dict = {}
    for architecture in ("soft", "topk"):
        runner, sae = _train(
            architecture,
            rank,
            output_path=f"out-{architecture}",
            checkpoint_path=f"ckpt-{architecture}",
        )
        results[architecture] = {
            "state": {k: v.detach().clone() for k, v in sae.state_dict().items()},
            "n_dataset_processed": runner.activations_store.n_dataset_processed,
            "checkpoint_path": runner.cfg.checkpoint_path,
        }

    # Every other SAELens training architecture, briefly.
    from sae_lens.registry import get_sae_training_class

    results["architectures"] = {}
    for architecture, extra in OTHER_ARCHITECTURES.items():
        config_class = get_sae_training_class(architecture)[1]
        runner, sae = _train(
            "topk",
            rank,
            sae=config_class(d_in=D_MODEL, d_sae=128, **extra),
            training_tokens=GLOBAL_BATCH * 12,
            n_checkpoints=0,
        )
        results["architectures"][architecture] = {
            "state": {k: v.detach().clone() for k, v in sae.state_dict().items()},
            "initial": runner.initial_state,
        }

    # (d) the k penalty of one training step on inputs whose k_hat means differ between ranks
    sae = k_penalty_sae()
    torch.manual_seed(100 + rank)
    x = torch.randn(32, D_MODEL) * (1 + 3 * rank)
    results["k_penalty"] = {"x": x}
    for name, hooked in (("local", False), ("global", True)):
        handle = install_global_batch_sums(sae) if hooked else None
        sae.zero_grad()
        out = k_penalty_step(sae, x)
        out.losses["k_loss"].backward()
        results["k_penalty"][name] = {
            "k_loss": out.losses["k_loss"].detach(),
            "mse_loss": out.losses["mse_loss"].detach(),
            "k_hat_mean": out.metrics["softsae/k_hat_mean"],
            "W_k_out_grad": sae.W_k_out.grad.clone(),
        }
        if handle is not None:
            handle.remove()
    # ... and the k_budget="normalize" factor, which must come from the global batch mean
    sae = k_penalty_sae("normalize")
    for name, hooked in (("local", False), ("global", True)):
        handle = install_global_batch_sums(sae) if hooked else None
        sae.k_scale.fill_(1.0)  # each pass starts from the same running factor
        out = k_penalty_step(sae, x)
        results["k_penalty"][name]["k_scale_batch"] = out.metrics["softsae/k_scale_batch"]
        results["k_penalty"][name]["k_scale_running"] = out.metrics["softsae/k_scale_running"]
        if handle is not None:
            handle.remove()

    # Clear errors, raised on every rank before any training.
    results["errors"] = {
        "batch": _error_of(lambda: _train("topk", rank, train_batch_size_tokens=GLOBAL_BATCH + 1)),
        "config": _error_of(lambda: _train("topk", rank, lr=1e-3 * (1 + rank))),
        "small_dataset": _error_of(
            lambda: DistributedSAETrainingRunner(
                runner_cfg("topk"),
                override_model=build_tiny_model(),
                override_dataset=token_dataset(9),
            )
        ),
    }

    # Resume the SoftSAE run from its mid-run checkpoint (written by rank 0) on two ranks.
    checkpoint_root = root / "rank0" / results["soft"]["checkpoint_path"]
    (checkpoint,) = [p for p in checkpoint_root.iterdir() if p.is_dir() and p.name.isdigit()]
    resumed_runner, resumed = _train(
        "soft",
        rank,
        resume_from_checkpoint=str(checkpoint),
        output_path="out-resumed",
        checkpoint_path="ckpt-resumed",
    )
    results["resume"] = {
        "checkpoint": str(checkpoint),
        "state": {k: v.detach().clone() for k, v in resumed.state_dict().items()},
        "n_dataset_processed": resumed_runner.activations_store.n_dataset_processed,
    }
    return results


def _worker(rank: int, port: int, root: str, package: str) -> None:
    import softsae_lens

    if str(Path(softsae_lens.__file__).parent) != package:
        # The forkserver imports from the environment's path, not this test session's.
        raise RuntimeError(
            f"rank {rank} imported softsae_lens from {softsae_lens.__file__}, the tests from "
            f"{package}; set PYTHONPATH to the checkout under test"
        )
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    torch.set_num_threads(1)
    root_path = Path(root)
    workdir = root_path / f"rank{rank}"
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    results_dir = root_path / "results"
    results_dir.mkdir(exist_ok=True)
    try:
        results = _scenarios(rank, root_path)
    except Exception:
        (results_dir / f"error_rank{rank}.txt").write_text(traceback.format_exc())
        raise
    torch.save(results, results_dir / f"rank{rank}.pt")


def run_two_ranks(root: Path) -> list[dict]:
    """Run the scenarios on two processes; return each rank's results.

    A forkserver that imports the libraries once and forks both ranks from that fresh process
    (never from this one, whose OpenMP threads a fork would not carry over): importing
    SAELens costs more than all the scenarios.
    """
    import softsae_lens

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed_scenarios", "softsae_lens", "sae_lens"]
    )
    mp.start_processes(
        _worker,
        args=(free_port(), str(root), str(Path(softsae_lens.__file__).parent)),
        nprocs=WORLD,
        start_method="forkserver",
        join=True,
    )
    return [torch.load(root / "results" / f"rank{r}.pt") for r in range(WORLD)]
