"""One flag style per command line, the other accepted: ``--a-b`` for the generated CLIs,
SAELens's ``--a_b`` for ``train`` and ``train_activations``."""

import dataclasses

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


def _generated_clis():
    """``(config class, parse_args)`` of every command line generated from a config dataclass."""
    from softsae_lens import analyze
    from softsae_lens.convert import cli as convert
    from softsae_lens.dashboards import __main__ as dashboards
    from softsae_lens.dashboards.config import DashboardsConfig
    from softsae_lens.experiments import demo, k_budget, realistic_grid_config
    from softsae_lens.experiments.minilm import config as minilm
    from softsae_lens.experiments.sweep import config as sweep
    from softsae_lens.experiments.synthetic import cli as synthetic

    return {
        "demo": (demo.DemoConfig, demo.parse_args),
        "minilm": (minilm.Settings, minilm.parse_args),
        "analyze": (analyze.AnalyzeConfig, analyze._parse_args),
        "dashboards": (DashboardsConfig, dashboards.parse_args),
        "sweep": (sweep.SweepConfig, sweep.parse_args),
        "synthetic": (synthetic.SyntheticConfig, synthetic.parse_args),
        "realistic_grid": (realistic_grid_config.GridConfig, realistic_grid_config.parse_args),
        "k_budget": (k_budget.KBudgetConfig, k_budget.parse_args),
        "convert": (convert.ConvertConfig, convert.parse_args),
    }


@pytest.mark.parametrize("name", sorted(_generated_clis()))
def test_every_generated_flag_has_help_from_its_field_docstring(name):
    """simple_parsing reads a field's docstring from the line right below its definition only: a
    definition wrapped over several lines silently leaves its flag without help."""
    import io

    from softsae_lens.flags import config_parser

    config_class, _ = _generated_clis()[name]
    parser = config_parser(config_class, name)
    parser.print_help(file=io.StringIO())  # simple_parsing adds the flags when first used
    fields = [f.name for f in dataclasses.fields(config_class) if f.metadata.get("cmd", True)]
    helped = {a.dest.removeprefix("cfg."): a.help for a in parser._actions}
    assert set(fields) <= set(helped), set(fields) - set(helped)
    assert [f for f in fields if not helped[f]] == []


@pytest.mark.parametrize(
    ("name", "argv", "field", "value"),
    [
        ("sweep", ["--k_report_docs", "3"], "k_report_docs", 3),
        ("synthetic", ["--realistic_lr", "1e-3"], "realistic_lr", 1e-3),
        ("realistic_grid", ["report", "--plan_only"], "plan_only", True),
        ("k_budget", ["--sweeps", "a=b", "c", "--out", "o"], "sweeps", ["a=b", "c"]),
        ("convert", ["--hook_name", "h", "ae.pt", "out"], "hook_name", "h"),
        (
            "dashboards",
            ["--sae", "s", "--text", "a", "--top_by", "frequency"],
            "top_by",
            "frequency",
        ),
    ],
)
def test_the_converted_clis_take_both_spellings_and_their_list_syntax(name, argv, field, value):
    _, parse_args = _generated_clis()[name]
    assert getattr(parse_args(argv), field) == value
    dashed = [a.replace("_", "-") if a.startswith("--") else a for a in argv]
    assert getattr(parse_args(dashed), field) == value


def test_a_switch_takes_no_value_so_it_cannot_swallow_a_positional_argument():
    from softsae_lens.convert.cli import parse_args

    cfg = parse_args(["--overwrite", "--unsafe-pickle", "ae.pt", "out"])
    assert (cfg.checkpoint, cfg.out_dir, cfg.overwrite, cfg.unsafe_pickle) == (
        "ae.pt", "out", True, True
    )  # fmt: skip
