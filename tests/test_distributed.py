"""Data-parallel training under torch.distributed: 2 CPU processes (Gloo) on the tiny model.

The two processes start once for the module (``two_ranks``) and run every scenario of
``distributed_scenarios`` in their own working directories; single-process references run here.
"""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from distributed_scenarios import (
    GLOBAL_BATCH,
    OTHER_ARCHITECTURES,
    ROWS,
    STEPS,
    interleaved_dataset,
    k_penalty_sae,
    k_penalty_step,
    run_two_ranks,
    runner_cfg,
)
from helpers import build_tiny_model, tiny_runner_cfg, token_dataset
from sae_lens import SAE, LanguageModelSAETrainingRunner
from safetensors.torch import load_file

from softsae_lens import DistributedSAETrainingRunner, configure_runner
from softsae_lens.training.distributed import DistributedContext, shard_dataset
from softsae_lens.training.runner import (
    DISTRIBUTED_STATE_FILENAME,
    checkpoint_world_size,
    store_state_filename,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_ranks")
    return root, run_two_ranks(root)


def _single_process(architecture, dataset, **overrides):
    """SAELens's own runner in this process, from rank 0's seed."""
    model = build_tiny_model()
    torch.manual_seed(0)
    cfg = runner_cfg(architecture, checkpoint_path=None, n_checkpoints=0, **overrides)
    return LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()


# (a) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["soft", "topk"])
def test_parameters_identical_on_every_rank(two_ranks, architecture):
    _, results = two_ranks
    states = [r[architecture]["state"] for r in results]
    assert set(states[0]) == set(states[1])
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


@pytest.mark.parametrize("architecture", list(OTHER_ARCHITECTURES))
def test_every_sae_lens_architecture_trains_data_parallel(two_ranks, architecture):
    _, results = two_ranks
    states = [r["architectures"][architecture]["state"] for r in results]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    # Both ranks started from rank 0's initialisation (rank 1 drew another) and trained from it.
    initial = [r["architectures"][architecture]["initial"] for r in results]
    assert not torch.equal(initial[0]["W_dec"], initial[1]["W_dec"])
    assert not torch.equal(states[0]["W_dec"], initial[0]["W_dec"])
    if "topk_threshold" in states[0]:  # BatchTopK's threshold was updated
        assert states[0]["topk_threshold"] > 0


# (b) and (e) -------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["soft", "topk"])
def test_two_processes_match_one_process_on_the_same_global_batches(
    two_ranks, architecture, tmp_path
):
    root, _ = two_ranks
    distributed = SAE.load_from_disk(root / "rank0" / f"out-{architecture}")
    _single_process(architecture, interleaved_dataset(), output_path=str(tmp_path / "ref"))
    reference = SAE.load_from_disk(tmp_path / "ref")
    assert type(distributed) is type(reference)
    ref_state, dist_state = reference.state_dict(), distributed.state_dict()
    assert set(dist_state) == set(ref_state)
    for name, value in ref_state.items():
        torch.testing.assert_close(dist_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    for field in ("l0", "num_dead_features"):  # the trainer's global sparsity window
        assert distributed.cfg.metadata.get(field) == pytest.approx(
            reference.cfg.metadata.get(field), rel=1e-5
        ), field


def test_one_process_on_other_batches_ends_elsewhere(two_ranks):
    # The comparison above can fail: reading the dataset in its stored order (rank 0's rows,
    # then rank 1's), one process sees other global batches and ends elsewhere.
    root, _ = two_ranks
    distributed = SAE.load_from_disk(root / "rank0" / "out-topk")
    other = _single_process("topk", token_dataset(ROWS))
    assert (distributed.W_dec - other.W_dec).abs().max() > 1e-3


def test_each_rank_read_its_own_half_of_the_dataset(two_ranks):
    _, results = two_ranks
    # 4 norm-estimate batches + STEPS steps, each of GLOBAL_BATCH / 2 tokens = 4 rows per rank
    # (the counter trails the reader by one row).
    rows_per_rank = (STEPS + 4) * GLOBAL_BATCH // 2 // 16
    for result in results:
        assert result["topk"]["n_dataset_processed"] in (rows_per_rank - 1, rows_per_rank)


# (c) ---------------------------------------------------------------------------------------


def test_only_rank_zero_wrote_files(two_ranks):
    root, results = two_ranks
    assert [p for p in (root / "rank1").rglob("*")] == []
    for architecture in ("soft", "topk"):
        out = root / "rank0" / f"out-{architecture}"
        assert {p.name for p in out.iterdir()} == {
            "cfg.json",
            "sae_weights.safetensors",
            "runner_cfg.json",
            "sparsity.safetensors",
        }
        runner_dict = json.loads((out / "runner_cfg.json").read_text())
        assert runner_dict["train_batch_size_tokens"] == GLOBAL_BATCH  # the global batch
        (checkpoint,) = (root / "rank0" / results[0][architecture]["checkpoint_path"]).iterdir()
        assert checkpoint_world_size(checkpoint) == 2
        state = json.loads((checkpoint / DISTRIBUTED_STATE_FILENAME).read_text())
        assert len(state["n_dataset_processed"]) == 2
        assert (checkpoint / store_state_filename(1)).is_file()
        assert (checkpoint / store_state_filename(0)).name == "activations_store_state.safetensors"


def test_saved_sae_loads_like_a_single_process_one(two_ranks):
    root, results = two_ranks
    sae = SAE.load_from_disk(root / "rank0" / "out-soft")
    assert sae.cfg.architecture() == "soft"
    x = torch.randn(5, sae.cfg.d_in)
    assert sae.encode(x).shape == (5, sae.cfg.d_sae)


# (d) ---------------------------------------------------------------------------------------


def test_soft_k_penalty_uses_the_global_mean_k_hat(two_ranks):
    _, results = two_ranks
    ranks = [r["k_penalty"] for r in results]
    local_means = [r["local"]["k_hat_mean"] for r in ranks]
    assert abs(local_means[0] - local_means[1]) > 0.2, "the ranks' k_hat means must differ"

    # One process on both ranks' inputs: the objective the two ranks must share.
    sae = k_penalty_sae()
    x = torch.cat([r["x"] for r in ranks])
    out = k_penalty_step(sae, x)
    out.losses["k_loss"].backward()
    # k_loss = c * softplus(mean k_hat - target) * mse / target: divide out the batch's mse.
    reference = (out.losses["k_loss"] / out.losses["mse_loss"]).item()
    for r in ranks:
        glob = (r["global"]["k_loss"] / r["global"]["mse_loss"]).item()
        local = (r["local"]["k_loss"] / r["local"]["mse_loss"]).item()
        assert glob == pytest.approx(reference, rel=1e-5)
        assert local != pytest.approx(reference, rel=1e-2)
    # DDP averages the ranks' gradients: that average is the one-process gradient.
    averaged = sum(r["global"]["W_k_out_grad"] for r in ranks) / len(ranks)
    torch.testing.assert_close(averaged, sae.W_k_out.grad, rtol=1e-4, atol=1e-7)
    # A mean of per-rank softplus terms is a different objective.
    per_rank = sum(r["local"]["W_k_out_grad"] for r in ranks) / len(ranks)
    assert not torch.allclose(per_rank, sae.W_k_out.grad, rtol=1e-2, atol=1e-6)


def test_soft_k_budget_factor_uses_the_global_mean_k_hat(two_ranks):
    _, results = two_ranks
    ranks = [r["k_penalty"] for r in results]
    sae = k_penalty_sae("normalize")
    out = k_penalty_step(sae, torch.cat([r["x"] for r in ranks]))
    reference = out.metrics["softsae/k_scale_batch"].item()
    for r in ranks:
        assert r["global"]["k_scale_batch"].item() == pytest.approx(reference, rel=1e-5)
        assert r["local"]["k_scale_batch"].item() != pytest.approx(reference, rel=1e-2)
        # the running factor inference uses moves identically on every rank
        assert r["global"]["k_scale_running"].item() == pytest.approx(
            out.metrics["softsae/k_scale_running"].item(), rel=1e-5
        )


def test_softplus_of_mean_differs_from_mean_of_softplus_here(two_ranks):
    # Guards the test above against a case where the two objectives coincide.
    _, results = two_ranks
    means = torch.tensor([r["k_penalty"]["local"]["k_hat_mean"] for r in results])
    target, beta = 4.0, 5.0
    assert (
        F.softplus(means.mean() - target, beta=beta)
        < F.softplus(means - target, beta=beta).mean() - 1e-3
    )


# Errors ------------------------------------------------------------------------------------


def test_clear_errors_on_every_rank(two_ranks):
    _, results = two_ranks
    for r in results:
        errors = r["errors"]
        assert errors["batch"].startswith("ValueError: train_batch_size_tokens=129")
        assert "divisible by the number of processes WORLD_SIZE=2" in errors["batch"]
        assert "differs across ranks" in errors["config"]
        assert "; lr: rank 0 has 0.001, rank 1 has 0.002" in errors["config"]
        assert errors["small_dataset"].startswith("ValueError: the dataset has 9 rows")
        assert "WORLD_SIZE=2" in errors["small_dataset"]


def test_shard_dataset_is_disjoint_and_complete():
    dataset = token_dataset(11)
    shards = [shard_dataset(dataset, DistributedContext(r, 3, r)) for r in range(3)]
    rows = [tuple(row["tokens"]) for shard in shards for row in shard]
    assert sorted(rows) == sorted(tuple(row["tokens"]) for row in dataset)
    with pytest.raises(ValueError, match="11 rows, too few to shard over WORLD_SIZE=3"):
        shard_dataset(dataset, DistributedContext(0, 3, 0), min_rows_per_rank=4)
    with pytest.raises(ValueError, match="DatasetDict"):
        shard_dataset(DatasetDict(train=dataset), DistributedContext(0, 3, 0))


def test_per_rank_batch_must_divide():
    context = DistributedContext(0, 3, 0)
    assert context.per_rank_batch(12) == 4
    with pytest.raises(ValueError, match="train_batch_size_tokens=10 .* WORLD_SIZE=3"):
        context.per_rank_batch(10)
    assert context.local_device("cuda") == "cuda:0"
    assert DistributedContext(2, 3, 1).local_device("cuda:0") == "cuda:1"
    assert context.local_device("cpu") == "cpu"


# Resume ------------------------------------------------------------------------------------


def test_resume_with_the_same_number_of_processes(two_ranks):
    _, results = two_ranks
    states = [r["resume"]["state"] for r in results]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    # It continued where the checkpoint stood (the last buffer of activations before the
    # checkpoint is not saved, as in one process): it ends within one LLM batch (8 rows) of
    # the uninterrupted run's position, and it trained: its weights differ from the checkpoint's.
    for r in results:
        gap = r["resume"]["n_dataset_processed"] - r["soft"]["n_dataset_processed"]
        assert 0 <= gap <= 8
    checkpoint = Path(results[0]["resume"]["checkpoint"])
    at_checkpoint = load_file(checkpoint / "sae_weights.safetensors")
    assert not torch.equal(at_checkpoint["W_dec"], states[0]["W_dec"])


def test_resume_with_another_number_of_processes_is_refused(two_ranks, tiny_model):
    _, results = two_ranks
    checkpoint = results[0]["resume"]["checkpoint"]
    cfg = runner_cfg("soft", resume_from_checkpoint=checkpoint, checkpoint_path=None)
    runner = DistributedSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset(ROWS)
    )
    with pytest.raises(
        ValueError, match=r"written by 2 process\(es\) but this run has WORLD_SIZE=1"
    ):
        runner.run()


def test_a_two_process_checkpoint_missing_its_last_files_is_incomplete(
    two_ranks, tiny_model, tmp_path
):
    """Issue 25.3: a copy without rank 1's position and distributed_state.json was resumed by
    one process silently, applying rank 0's shard position to the whole dataset."""
    import shutil

    from softsae_lens.training.checkpoints import CheckpointError

    _, results = two_ranks
    copy = tmp_path / "copy" / Path(results[0]["resume"]["checkpoint"]).name
    shutil.copytree(results[0]["resume"]["checkpoint"], copy)
    for name in ("activations_store_state.rank1.safetensors", "distributed_state.json"):
        (copy / name).unlink()
    cfg = runner_cfg("soft", resume_from_checkpoint=str(copy), checkpoint_path=None)
    runner = DistributedSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset(ROWS)
    )
    with pytest.raises(CheckpointError, match="incomplete checkpoint: .* is missing"):
        runner.run()


# One process --------------------------------------------------------------------------------


def test_one_process_is_sae_lens_runner_unchanged(tiny_model, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    saes = []
    for runner_class in (LanguageModelSAETrainingRunner, DistributedSAETrainingRunner):
        torch.manual_seed(0)
        cfg = configure_runner(tiny_runner_cfg(None))
        runner = runner_class(cfg, override_model=tiny_model, override_dataset=token_dataset())
        saes.append(runner.run())
    assert runner.distributed is None
    for name, value in saes[0].state_dict().items():
        assert torch.equal(value, saes[1].state_dict()[name]), name


# The CLI under torchrun ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_cli_on_the_tiny_model(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    example = runpy.run_path(str(REPO / "examples" / "tiny_cli_model.py"))
    example["write_tiny_model"](tmp_path / "model")
    example["write_token_dataset"](tmp_path / "tokens")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "softsae_lens.train", "--architecture", "soft",
        "--d_in", "32", "--d_sae", "128", "--k", "8",
        "--model_class_name", "AutoModelForCausalLM", "--model_name", str(tmp_path / "model"),
        "--hook_name", "transformer.h.0", "--dataset_path", str(tmp_path / "tokens"),
        "--dataset_trust_remote_code", "false", "--context_size", "16",
        "--training_tokens", "2560", "--train_batch_size_tokens", "128",
        "--n_batches_in_buffer", "8", "--store_batch_size_prompts", "8", "--device", "cpu",
        "--log_to_wandb", "false", "--checkpoint_path", str(tmp_path / "ckpt"),
        "--n_checkpoints", "1", "--output_path", str(tmp_path / "sae"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    sae = SAE.load_from_disk(tmp_path / "sae")
    assert sae.cfg.architecture() == "soft" and sae.cfg.d_sae == 128
    (checkpoint,) = [p for p in (tmp_path / "ckpt").glob("*/*") if p.is_dir()]
    assert checkpoint_world_size(checkpoint) == 2


@pytest.mark.slow
def test_distributed_benchmark_prints_throughput_and_overhead():
    # A smoke test of the script at a tiny size, not a timing.
    done = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "bench_distributed.py"),
            "--architecture", "soft", "--d-in", "32", "--d-sae", "128", "--k", "8",
            "--batch", "64", "--steps", "8", "--warmup", "2", "--repeats", "1",
        ],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    one, two = report["results"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["tokens_per_s"] > 0 and two["tokens_per_s"] > 0
    assert 0 <= two["allreduce_overhead_fraction"] < 1 and two["local_step_ms"] > 0
