"""No run lost, no raw traceback (issue 25): data checked before training, resumable runs on
arrays, checkpoints that are complete or refused, nothing overwritten, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_activations import D_IN, sparse_rows

from softsae_lens import SoftTrainingSAEConfig
from softsae_lens.train_activations import main
from softsae_lens.training.checkpoints import (
    COMPLETE_MARKER,
    CheckpointError,
    is_complete,
    latest_complete,
    resolve_checkpoint,
)
from softsae_lens.training.on_arrays import ActivationsRunnerConfig, train_on_activations


@pytest.fixture(scope="module")
def npy_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, sparse_rows(3000))
    return str(path)


def _cfg(npy_path, tmp_path, **overrides) -> ActivationsRunnerConfig:
    base = dict(
        sae=SoftTrainingSAEConfig(
            d_in=D_IN, d_sae=64, k=4, normalize_activations="expected_average_only_in"
        ),
        activations=npy_path,
        eval_fraction=0.1,
        train_batch_size=100,
        # 60 steps of 100 over 2700 training rows: the run crosses two pass boundaries.
        training_samples=100 * 60,
        lr=3e-3,
        output_path=str(tmp_path / "sae"),
        seed=0,
    )
    base.update(overrides)
    return ActivationsRunnerConfig(**base)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


# --- item 1: NaN/inf rows are found before training ------------------------------------------


def test_nonfinite_row_fails_before_training_and_skip_trains_without_it(tmp_path):
    data = sparse_rows(3000)
    data[2990, 5] = np.nan  # late in the file: drawn only near the end of a pass
    data[17, 0] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, data)
    cfg = _cfg(str(path), tmp_path, n_checkpoints=1, checkpoint_path=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError) as err:
        train_on_activations(cfg, progress=False)
    assert f"activations={path}: 2 of 3000 rows hold NaN or inf (rows 17, 2990)" in str(err.value)
    # A held-out row failed the run only after training; it is found before now too.
    from softsae_lens.data.batches import split_rows

    held_out = int(split_rows(3000, 0.1, 100_000, 0)[1][0])
    only_held_out = sparse_rows(3000)
    only_held_out[held_out, 1] = np.nan
    np.save(tmp_path / "held.npy", only_held_out)
    with pytest.raises(ValueError, match=rf"1 of 3000 rows hold NaN or inf \(rows {held_out}\)"):
        train_on_activations(
            _cfg(str(tmp_path / "held.npy"), tmp_path, output_path=None), progress=False
        )
    assert "nothing was trained" in str(err.value)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "sae").exists()

    run = train_on_activations(
        _cfg(str(path), tmp_path, nonfinite_rows="skip", output_path=None), progress=False
    )
    assert run.metrics["nonfinite_rows_left_out"] == 2
    assert np.isfinite(run.metrics["explained_variance"])
    with pytest.raises(ValueError, match="nonfinite_rows='drop': must be one of error, skip"):
        _cfg(str(path), tmp_path, nonfinite_rows="drop")


# --- item 2: resume --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(npy_path, tmp_path_factory):
    """A run with two checkpoints (at 2100 and 4100 samples), trained to the end."""
    root = tmp_path_factory.mktemp("whole")
    cfg = _cfg(npy_path, root, n_checkpoints=2, checkpoint_path=str(root / "ckpt"))
    run = train_on_activations(cfg, progress=False)
    return root, run


def test_resumed_run_equals_the_uninterrupted_one(npy_path, tmp_path, uninterrupted):
    root, whole = uninterrupted
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["2100", "4100"]
    assert all(is_complete(p) for p in (root / "ckpt").iterdir())
    resumed = train_on_activations(
        _cfg(
            npy_path,
            tmp_path,
            n_checkpoints=2,
            checkpoint_path=str(tmp_path / "ckpt"),
            resume_from_checkpoint=str(root / "ckpt" / "2100"),
        ),
        progress=False,
    )
    # It wrote only the checkpoint still ahead of it.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["4100"]
    a, b = _weights(root / "sae"), _weights(tmp_path / "sae")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.metrics["explained_variance"] == whole.metrics["explained_variance"]


def test_resume_from_a_folder_takes_its_latest_complete_checkpoint(uninterrupted, tmp_path):
    root, _ = uninterrupted
    assert resolve_checkpoint(root / "ckpt") == root / "ckpt" / "4100"
    copy = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", copy)
    (copy / "4100" / COMPLETE_MARKER).unlink()
    assert latest_complete(copy) == copy / "2100"


def test_resume_with_other_arguments_is_refused(npy_path, uninterrupted, tmp_path):
    root, _ = uninterrupted
    cfg = _cfg(npy_path, tmp_path, lr=1e-3, resume_from_checkpoint=str(root / "ckpt" / "2100"))
    with pytest.raises(
        ValueError, match=r"lr=0.001: the checkpoint .*2100 was trained with lr=0.003"
    ):
        train_on_activations(cfg, progress=False)


# --- item 3: incomplete checkpoints ----------------------------------------------------------


def test_incomplete_checkpoints_are_refused_by_name(uninterrupted, tmp_path):
    root, _ = uninterrupted
    # Killed after SAELens's first file: only the weights.
    only_weights = tmp_path / "a" / "4100"
    only_weights.mkdir(parents=True)
    shutil.copy(root / "ckpt" / "4100" / "sae_weights.safetensors", only_weights)
    with pytest.raises(
        CheckpointError, match="incomplete checkpoint: it has no checkpoint_complete"
    ):
        resolve_checkpoint(only_weights)
    # A copy that lost files after the marker was written: the marker lists them.
    lost = tmp_path / "b" / "4100"
    shutil.copytree(root / "ckpt" / "4100", lost)
    (lost / "activation_batches_state.json").unlink()
    with pytest.raises(
        CheckpointError, match="incomplete checkpoint: activation_batches_state.json is missing"
    ):
        resolve_checkpoint(lost)
    shutil.copytree(root / "ckpt" / "2100", tmp_path / "b" / "2100")
    with pytest.raises(CheckpointError, match="latest complete checkpoint beside it is .*2100"):
        resolve_checkpoint(lost)
    assert resolve_checkpoint(tmp_path / "b") == tmp_path / "b" / "2100"
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        resolve_checkpoint(tmp_path / "a")
    # Killed right after SAELens made the folder: empty, still a checkpoint by its name.
    (tmp_path / "b" / "6100").mkdir()
    with pytest.raises(CheckpointError, match="6100: incomplete checkpoint"):
        resolve_checkpoint(tmp_path / "b" / "6100")
    # A run id made only of digits (SAELens draws 8 hex characters) is a folder of checkpoints.
    shutil.copytree(root / "ckpt", tmp_path / "runs" / "12345678")
    assert resolve_checkpoint(tmp_path / "runs" / "12345678").name == "4100"
    assert resolve_checkpoint(tmp_path / "runs").name == "4100"


# --- item 6: no silent overwrites ------------------------------------------------------------


def test_finished_sae_and_other_runs_checkpoints_are_not_overwritten(
    npy_path, uninterrupted, tmp_path
):
    root, _ = uninterrupted
    before = _weights(root / "sae")
    with pytest.raises(ValueError, match=r"output_path=.*sae: already holds an SAE \(cfg.json\)"):
        train_on_activations(_cfg(npy_path, root), progress=False)
    assert all(torch.equal(v, _weights(root / "sae")[k]) for k, v in before.items())
    # --overwrite replaces an SAE, and only an SAE; the folder appears whole, at once.
    other = tmp_path / "other"
    shutil.copytree(root / "sae", other)
    train_on_activations(
        _cfg(npy_path, tmp_path, output_path=str(other), overwrite=True, seed=1), progress=False
    )
    assert not torch.equal(before["W_dec"], _weights(other)["W_dec"])  # another seed
    assert not list(tmp_path.glob(".other.partial-*"))
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"output_path=.*other: holds files that are not an SAE"):
        train_on_activations(_cfg(npy_path, tmp_path, output_path=str(other), overwrite=True))
    with pytest.raises(
        ValueError,
        match=r"checkpoint_path=.*ckpt: already holds checkpoints of another run \(2100, 4100\)",
    ):
        train_on_activations(
            _cfg(npy_path, tmp_path, checkpoint_path=str(root / "ckpt"), n_checkpoints=2),
            progress=False,
        )


# --- item 10: bad files, one line ------------------------------------------------------------


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    good = torch.from_numpy(sparse_rows(50))
    torch.save(good, tmp_path / "whole.pt")
    raw = (tmp_path / "whole.pt").read_bytes()
    files = {
        "empty.npy": b"",
        "garbage.pt": b"this is not a torch file at all",
        "truncated.pt": raw[: len(raw) // 2],
        "empty.safetensors": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as failed:
            main(["--activations", str(tmp_path / name), "--output_path", str(tmp_path / "o")])
        assert failed.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --activations={tmp_path / name}: not a"), err
        assert "Traceback" not in err and err.count("\n") == 1, err


# --- the language-model runner: markers, one-process local datasets, SIGTERM -------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _readme_args(tmp_path, **overrides) -> list[str]:
    """The README's tiny offline example (README: "Try it on a tiny model"), in ``tmp_path``."""
    import runpy

    example = runpy.run_path(str(REPO / "examples" / "tiny_cli_model.py"))
    if not (tmp_path / "model").exists():
        example["write_tiny_model"](tmp_path / "model")
        example["write_token_dataset"](tmp_path / "tokens")
    flags = {
        "architecture": "soft", "d_in": "32", "d_sae": "128", "k": "8",
        "model_class_name": "AutoModelForCausalLM", "model_name": str(tmp_path / "model"),
        "hook_name": "transformer.h.0", "dataset_path": str(tmp_path / "tokens"),
        "dataset_trust_remote_code": "false", "context_size": "16",
        "training_tokens": "2560", "train_batch_size_tokens": "128",
        "n_batches_in_buffer": "8", "store_batch_size_prompts": "8", "device": "cpu",
        "log_to_wandb": "false", "checkpoint_path": str(tmp_path / "ckpt"),
        "n_checkpoints": "1", "output_path": str(tmp_path / "sae"),
        **overrides,
    }  # fmt: skip
    return [part for name, value in flags.items() for part in (f"--{name}", value)]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's tiny offline example trained in one process (item 4: SAELens 6.54 hands a
    local dataset_path to the hub client there, HFValidationError before the fix)."""
    import os

    from softsae_lens.train import main as train_main

    root = tmp_path_factory.mktemp("readme")
    world = os.environ.pop("WORLD_SIZE", None)
    try:
        train_main(_readme_args(root))
    finally:
        if world is not None:
            os.environ["WORLD_SIZE"] = world
    return root


def test_readme_offline_example_trains_in_one_process(readme_run):
    from sae_lens import SAE

    assert SAE.load_from_disk(readme_run / "sae").cfg.d_sae == 128
    (checkpoint,) = [p for p in (readme_run / "ckpt").glob("*/*") if p.is_dir()]
    assert is_complete(checkpoint)  # item 3: the runner's checkpoints carry the marker too


# --- items 5 and 9: analyze ------------------------------------------------------------------


def _analyze(*args):
    from softsae_lens.analyze import main as analyze_main

    return analyze_main([*args, "--no-png"])


def test_analyze_opens_an_sae_trained_on_a_hugging_face_module_name(readme_run, tmp_path):
    """Item 5: hook transformer.h.0 (SAELens's AutoModelForCausalLM path) on the bridge."""
    stats = _analyze("--sae", str(readme_run / "sae"), "--text", "t1 t2 t3 t4 t5 t6",
                     "--out", str(tmp_path / "a"))  # fmt: skip
    assert stats["hook_name_resolved"] == "blocks.0.hook_out"
    assert stats["n_tokens"] >= 6 and stats["k_hat_mean"] is not None


def test_analyze_rough_edges_are_one_line_errors(readme_run, tmp_path, capsys, monkeypatch):
    """Item 9: empty text, a missing file, ids outside the vocabulary, a width mismatch, a
    relative model path, an unknown model name."""
    sae = str(readme_run / "sae")
    out = ["--out", str(tmp_path / "o")]
    for args, message in [
        (["--text", ""], "--text '': empty"),
        (["--text-file", str(tmp_path / "nope.txt")], "nope.txt: no such file"),
    ]:
        with pytest.raises(SystemExit):
            _analyze("--sae", sae, *args, *out)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="no token to analyse: the 1 token.* all special"):
        _analyze("--sae", sae, "--text", "<|endoftext|>", *out)
    assert not (tmp_path / "o" / "corpus_stats.json").exists()
    with pytest.raises(
        ValueError,
        match=r"--token-ids: \[500\] outside the model's vocabulary; ids must be in \[0, 97\)",
    ):
        _analyze("--sae", sae, "--token-ids", "1 2 500", *out)
    wide = tmp_path / "wide"
    from sae_lens import SAE

    from softsae_lens.soft_sae import SoftSAEConfig

    wide_sae = SAE.from_dict(SoftSAEConfig(d_in=48, d_sae=96, k=4).to_dict())
    wide_sae.cfg.metadata.hook_name = "transformer.h.0"
    wide_sae.cfg.metadata.model_name = str(readme_run / "model")
    wide_sae.save_model(wide)
    with pytest.raises(
        ValueError, match="d_in=48 does not match the model's width 32 at hook 'blocks.0.hook_out'"
    ):
        _analyze("--sae", str(wide), "--text", "t1 t2", *out)
    # The runner records model_name as given: relative to the folder training ran in.
    moved = readme_run / "relative_sae"
    if not moved.exists():
        shutil.copytree(readme_run / "sae", moved)
        cfg = json.loads((moved / "cfg.json").read_text())
        cfg["metadata"]["model_name"] = "model"
        (moved / "cfg.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert _analyze("--sae", str(moved), "--text", "t1 t2 t3", *out)["n_tokens"] >= 3
    with pytest.raises(RuntimeError) as unknown:
        _analyze("--sae", sae, "--model", "no-such-model-xyz", "--text", "t1", *out)
    assert len(str(unknown.value)) < 800, len(str(unknown.value))


def test_lm_runner_refuses_an_incomplete_checkpoint(tmp_path, monkeypatch, capsys):
    """Item 3: a folder with only the weights was taken for a 1-process checkpoint before."""
    from softsae_lens.train import main as train_main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    partial = tmp_path / "killed" / "1280"
    partial.mkdir(parents=True)
    (partial / "sae_weights.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SystemExit) as failed:
        train_main(_readme_args(tmp_path, resume_from_checkpoint=str(partial)))
    assert failed.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: resume_from_checkpoint={partial}: incomplete checkpoint"), err


def test_sigterm_in_one_process_leaves_a_resumable_checkpoint(tiny_model, tmp_path, monkeypatch):
    """SAELens 6.54's handler saves into a folder it never created; here the run stops between
    two steps with a complete checkpoint, and resuming from it finishes the run."""
    import os
    import signal

    from helpers import tiny_runner_cfg, token_dataset

    from softsae_lens.training.interrupt import TrainingInterrupted
    from softsae_lens.training.run_length import configure_runner
    from softsae_lens.training.runner import DistributedSAETrainingRunner

    monkeypatch.delenv("WORLD_SIZE", raising=False)

    class SignalledAtBatch10(DistributedSAETrainingRunner):
        def run_trainer_with_interruption_handling(self, trainer):
            inner, count = trainer.data_provider, [0]

            def provider():
                while True:
                    count[0] += 1
                    if count[0] == 10:
                        os.kill(os.getpid(), signal.SIGTERM)
                    yield next(inner)

            trainer.data_provider = provider()
            return super().run_trainer_with_interruption_handling(trainer)

    cfg = configure_runner(tiny_runner_cfg(None, checkpoint_path=str(tmp_path / "ckpt")))
    runner = SignalledAtBatch10(cfg, override_model=tiny_model, override_dataset=token_dataset())
    with pytest.raises(TrainingInterrupted) as stopped:
        runner.run()
    checkpoint = stopped.value.checkpoint
    assert stopped.value.signal_name == "SIGTERM" and is_complete(checkpoint)
    assert "continue with --resume_from_checkpoint" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is not runner  # handlers restored
    resumed_cfg = configure_runner(
        tiny_runner_cfg(
            tmp_path / "sae", checkpoint_path=None, resume_from_checkpoint=str(checkpoint)
        )
    )
    sae = DistributedSAETrainingRunner(
        resumed_cfg, override_model=tiny_model, override_dataset=token_dataset()
    ).run()
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert (tmp_path / "sae" / "cfg.json").exists()


# --- the kill test ---------------------------------------------------------------------------


def _train_then_exit(cfg: ActivationsRunnerConfig, kill_in: str | None) -> None:
    """A child: train (optionally SIGKILLing itself inside a checkpoint write), exit."""
    import os
    import signal
    import traceback

    import torch

    torch.set_num_threads(1)  # as the children always ran: the kill moments were tuned so
    try:
        if kill_in is not None:
            import sae_lens.training.sae_trainer as trainer_module

            import softsae_lens.training.array_checkpoints as runner_module

            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            if kill_in == "sae_lens":  # after the weights, before the trainer state
                trainer_module.SAETrainer.save_trainer_state = die
            else:  # every file written, the marker not yet
                runner_module.mark_complete = die
        train_on_activations(cfg, progress=False)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _exit_at_once() -> None:
    """A child that does nothing: starting it starts the forkserver and its imports."""


@pytest.mark.slow
def test_sigkill_at_random_moments_never_takes_an_incomplete_checkpoint(npy_path, tmp_path):
    """SIGKILL a run at random moments and twice inside a checkpoint write; every restart
    resumes from the latest complete checkpoint (never an incomplete one) and the run ends
    with exactly the SAE of an uninterrupted run."""
    import multiprocessing
    import os
    import random
    import signal
    import time

    from sae_lens import SAE

    from softsae_lens.training.checkpoints import checkpoint_folders

    # A checkpoint every 4 of 200 steps, so that random kills often land in a write.
    settings = dict(training_samples=100 * 200, n_checkpoints=49)
    whole = tmp_path / "whole"
    train_on_activations(
        _cfg(npy_path, whole, checkpoint_path=str(whole / "ckpt"), **settings), progress=False
    )
    ckpt, out = tmp_path / "ckpt", tmp_path / "killed"
    # Children fork from a forkserver: a fresh single-threaded process that has imported the
    # libraries once. Forked from this process instead, a child inherits locks that this
    # process's other threads (OpenMP's pool, left running by earlier tests) held at the fork,
    # and under load it once hung on one (a futex) for good. A no-op child first starts the
    # server (unless a test before started it), so that the random kills below time training,
    # not the imports.
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["test_robustness", "softsae_lens", "sae_lens"])
    warm_up = forkserver.Process(target=_exit_at_once)
    warm_up.start()
    warm_up.join(300)
    assert warm_up.exitcode == 0, f"the forkserver's first child exited with {warm_up.exitcode}"
    moments = random.Random(25)
    plan = ["sae_lens", None, "marker", None, None, None, None, None]
    seen_incomplete, taken = 0, []
    for attempt, kill_in in enumerate([*plan, *[None] * 12]):
        latest = latest_complete(ckpt)
        cfg = _cfg(
            npy_path,
            out,
            checkpoint_path=str(ckpt),
            resume_from_checkpoint=None if latest is None else str(ckpt),
            **settings,
        )
        if latest is None and ckpt.exists():  # killed while writing the first: start over
            shutil.rmtree(ckpt)
        child = forkserver.Process(target=_train_then_exit, args=(cfg, kill_in))
        child.start()
        if kill_in is None and attempt < len(plan):
            time.sleep(moments.uniform(0.02, 0.3))
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
        child.join(120)
        if child.is_alive():  # never leave a hung child behind
            child.kill()
            child.join()
        assert child.exitcode in (0, -signal.SIGKILL), f"attempt {attempt}: {child.exitcode}"
        folders = checkpoint_folders(ckpt)
        incomplete = [p for _, p in folders if not is_complete(p)]
        seen_incomplete += len(incomplete)
        after = latest_complete(ckpt)
        assert after not in incomplete
        if after is not None:
            taken.append(after.name)
            assert SAE.load_from_disk(after).cfg.d_sae == 64  # a complete one always loads
            for folder in incomplete:
                with pytest.raises(CheckpointError, match="incomplete checkpoint"):
                    resolve_checkpoint(folder)
        if child.exitcode == 0 or (out / "sae" / "cfg.json").exists():
            break  # finished (a kill after the final SAE was renamed into place leaves it whole)
    assert (out / "sae" / "cfg.json").exists(), "the run never finished"
    assert seen_incomplete >= 2, "no kill landed inside a checkpoint write"
    a, b = _weights(whole / "sae"), _weights(out / "sae")
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- item 7: alpha outside float32's range ---------------------------------------------------


def test_alpha_outside_float32_range_is_refused_at_the_config():
    from helpers import train_step_input
    from sae_lens import TrainingSAE

    for alpha, scale in [(1e39, "absolute"), (1e-39, "absolute"), (1e39, "relative")]:
        with pytest.raises(ValueError, match=r"alpha_start must be in \[5.88e-39, 2.48e\+37\]"):
            SoftTrainingSAEConfig(
                d_in=D_IN, d_sae=64, k=4, alpha_start=alpha, alpha_end=alpha, alpha_scale=scale
            )
    # A relative alpha near the top of the range on large activations: the alpha formed from
    # the batch is kept inside the range, so the loss and every gradient stay finite.
    cfg = SoftTrainingSAEConfig(
        d_in=D_IN, d_sae=64, k=4, alpha_start=1e37, alpha_end=1e37, total_training_steps=100
    )
    torch.manual_seed(0)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    out = sae.training_forward_pass(train_step_input(torch.randn(32, D_IN) * 1e3))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in sae.parameters() if p.grad is not None)


# --- item 11: save_for_hub writes all or nothing ---------------------------------------------


def test_save_for_hub_writes_nothing_when_one_sae_fails_and_the_retry_works(tmp_path):
    from sae_lens import SAE

    from softsae_lens.hub import save_for_hub

    good = SAE.from_dict(
        SoftTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4).get_inference_sae_cfg_dict()
    )
    good.save_model(tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "good", bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    (bad / "cfg.json").write_text(json.dumps({**cfg, "architecture": "nobody"}))
    tree = tmp_path / "tree"
    with pytest.raises(
        ValueError, match="sae_id='second': the SAE does not load.*Nothing was written"
    ):
        save_for_hub({"first": tmp_path / "good", "second": bad}, tree)
    assert not tree.exists() or not any(tree.iterdir())  # the first SAE was not left behind
    save_for_hub({"first": tmp_path / "good", "second": tmp_path / "good"}, tree)  # the retry
    assert {p.name for p in tree.iterdir()} == {"first", "second", "README.md"}
    for sae_id, ref in [(3, good), ("t", torch.zeros(3))]:
        with pytest.raises(
            ValueError, match=r"^(sae_id=3: must be a string|saes\['t'\]=Tensor: must be an SAE)"
        ):
            save_for_hub({sae_id: ref}, tmp_path / "other")


# --- item 8: too small to shard, streamed too ------------------------------------------------


def test_a_streamed_dataset_too_small_to_shard_is_refused(tmp_path):
    """The CLI's default streaming=True gives an IterableDataset, which had no length check: a
    10-row dataset trained silently on 2 ranks, a 1-row one hung a rank."""
    from datasets import load_dataset
    from helpers import token_dataset

    from softsae_lens.training.distributed import DistributedContext, shard_dataset

    token_dataset(10).to_parquet(str(tmp_path / "train.parquet"))
    streamed = load_dataset(str(tmp_path), split="train", streaming=True)
    with pytest.raises(ValueError, match="has 10 rows, too few to shard over WORLD_SIZE=2"):
        shard_dataset(streamed, DistributedContext(0, 2, 0), min_rows_per_rank=8)
    shard = shard_dataset(streamed, DistributedContext(1, 2, 1), min_rows_per_rank=5)
    assert len(list(shard)) == 5


# --- item 12: an empty batch, an empty ae.pt -------------------------------------------------


def test_empty_training_batch_is_a_clear_error():
    from helpers import train_step_input
    from sae_lens import TrainingSAE

    cfg = SoftTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4, total_training_steps=10)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    with pytest.raises(ValueError, match=r"sae_in: an empty batch \(shape \(0, 16\)\)"):
        sae.training_forward_pass(train_step_input(torch.zeros(0, D_IN)))


def test_convert_on_an_empty_ae_pt_says_it_is_empty(tmp_path, capsys):
    from softsae_lens.convert.cli import main as convert_main

    (tmp_path / "ae.pt").write_bytes(b"")
    assert convert_main([str(tmp_path / "ae.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("as a torch checkpoint: the file is empty (0 bytes)"), err


def test_sigterm_stops_a_run_on_arrays_with_a_checkpoint_that_resumes_exactly(
    npy_path, tmp_path, uninterrupted, monkeypatch, capsys
):
    """A signal (a scheduler's SIGTERM, Ctrl-C) stops train_activations between two steps with
    a complete checkpoint; resuming from it ends with the uninterrupted run's SAE."""
    import os
    import signal

    from softsae_lens.data.batches import ActivationBatches

    root, _ = uninterrupted
    real_next, served = ActivationBatches.__next__, [0]

    def next_then_signal(self):
        served[0] += 1
        if served[0] == 2 + 30:  # the norm estimate reads 27 batches first
            os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self)

    monkeypatch.setattr(ActivationBatches, "__next__", next_then_signal)
    # Whatever an earlier test left installed (SAELens's own runner installs a handler and
    # keeps it): the run must put back exactly that.
    handler_before = signal.getsignal(signal.SIGTERM)
    args = ["--activations", npy_path, "--d_sae", "64", "--k", "4", "--train_batch_size", "100",
            "--training_samples", "6000", "--lr", "0.003", "--eval_fraction", "0.1", "--seed", "0",
            "--normalize_activations", "expected_average_only_in", "--n_checkpoints", "2",
            "--checkpoint_path", str(tmp_path / "ckpt"), "--output_path", str(tmp_path / "sae")]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted: SIGTERM received: stopped after 5 steps; checkpoint written" in err, err
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored
    checkpoint = latest_complete(tmp_path / "ckpt")
    assert checkpoint is not None and not (tmp_path / "sae").exists()
    monkeypatch.setattr(ActivationBatches, "__next__", real_next)
    main([*args, "--resume_from_checkpoint", str(tmp_path / "ckpt")])
    a, b = _weights(root / "sae"), _weights(tmp_path / "sae")
    for name in a:
        assert torch.equal(a[name], b[name]), name
