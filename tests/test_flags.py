"""One flag style per command line, the other accepted: ``--a-b`` for the generated CLIs,
SAELens's ``--a_b`` for ``train`` and ``train_activations``."""

import pytest

from softsae_lens.flags import spell_flags


def test_spell_flags_rewrites_flag_names_only():
    argv = ["--d_sae", "64", "--model-path=a_b-c", "-k", "3", "--text", "--x_y", "--", "v_w"]
    assert spell_flags(argv, "-") == [
        "--d-sae", "64", "--model-path=a_b-c", "-k", "3", "--text", "--x-y", "--", "v_w"
    ]  # fmt: skip
    assert spell_flags(["--d-sae", "64", "--train_batch-size"], "_") == [
        "--d_sae", "64", "--train_batch_size"
    ]  # fmt: skip


@pytest.mark.parametrize("flag", ["--d-sae", "--d_sae"])
def test_the_demo_takes_both_spellings(flag):
    from softsae_lens.experiments.demo import parse_args

    assert parse_args([flag, "64", "--eval_batches=3"]).d_sae == 64


@pytest.mark.parametrize("flag", ["--d-sae", "--d_sae"])
def test_train_takes_both_spellings(flag):
    from softsae_lens.train import parse_args

    cfg = parse_args(
        ["--architecture", "soft", flag, "256", "--d_in", "64", "--training-tokens", "2048"]
        + ["--train_batch_size_tokens", "1024", "--model_name", "m", "--dataset_path", "d"]
    )
    assert (cfg.sae.d_sae, cfg.training_tokens, cfg.sae.total_training_steps) == (256, 2048, 2)
