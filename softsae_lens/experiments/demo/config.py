"""The demo's settings (:class:`DemoConfig`, whose fields are its command-line flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simple_parsing import field

from softsae_lens.data.corpus import SOURCES, parse_sources
from softsae_lens.evals.lm import EvalBudget
from softsae_lens.experiments.sweep.config import SweepConfig
from softsae_lens.flags import config_parser, parse_config
from softsae_lens.models import check_model_choice
from softsae_lens.training.decoder_bias import DecoderBiasInit

__all__ = ["DEFAULT_OUT", "SAE_NAMES", "DemoConfig", "parse_args"]

DEFAULT_OUT = Path("out/demo")
SAE_NAMES = ("softsae", "topk")
SAE_ARCHITECTURES = ("soft", "topk")


@dataclass
class DemoConfig:
    """SoftSAE next to TopK on a real language model and real text, offline by default."""

    tokens: int = 300_000
    """training tokens (both SAEs)"""
    layer: int = 5
    """residual stream layer (blocks.L.hook_resid_post)"""
    d_sae: int | None = None
    """latents per SAE (unset: 8 x d_model)"""
    k: int = 32
    """TopK's k and SoftSAE's target mean k"""
    model: str | None = None
    """TransformerLens model name (unset: SmolLM2-135M-Instruct, offline)"""
    model_path: Path | None = None
    """a .gguf file or a local Hugging Face model folder, booted as a bridge, offline"""
    dataset: str | None = None
    """Hugging Face dataset with a 'text' column (unset: the local corpus)"""
    sources: tuple[str, ...] = field(default=SOURCES, type=parse_sources, nargs=None)
    """local text sources to use when present, comma-separated"""
    out: Path = DEFAULT_OUT
    """output folder"""
    context_size: int = 128
    """tokens per row"""
    batch_tokens: int = 1024
    """tokens per step"""
    lr: float = 1e-3
    """learning rate (both SAEs)"""
    b_dec_init: DecoderBiasInit = "zeros"
    """where both SAEs' decoder bias starts: zeros (SAELens's default) or mean (the mean activation of the first training rows; for residual streams whose mean dominates, as Gemma's does)"""
    eval_batches: int = 6
    """held-out batches per SAE for the CE-loss and KL scores (3 model forwards each)"""
    eval_variance_batches: int = 32
    """held-out batches per SAE for explained variance, MSE, L0 (one forward to the hook each;
    an adaptive SAE's L0 needs many documents to be measured within a few percent)"""
    eval_batch_prompts: int = 8
    """rows of --context-size tokens per evaluation batch"""
    k_report_docs: int = 24
    """held-out documents for SoftSAE's per-token k_hat statistics"""
    seed: int = 0
    """seed (also picks held-out documents)"""
    device: str = "cpu"
    """torch device"""
    plan_only: bool = False
    """print the corpus, run and evaluation cost; stop"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the flag, its value and the rule."""
        positive = ("tokens", "k", "context_size", "batch_tokens", "eval_batches")
        positive += ("eval_batch_prompts", "eval_variance_batches")
        for name in (*positive, "k_report_docs"):
            value = getattr(self, name)
            if value is not None and (value <= 0 if name in positive else value < 0):
                allowed = "positive" if name in positive else ">= 0"
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")
        check_model_choice(self.model, self.model_path)
        if self.tokens < self.batch_tokens:
            raise ValueError(
                f"--tokens={self.tokens} is less than one batch (--batch-tokens={self.batch_tokens})"
            )

    def as_sweep(self) -> SweepConfig:
        """The demo as a preset of the LM-comparison pipeline: SoftSAE and TopK at ``k``, named
        ``softsae`` and ``topk``, 8 x d_model latents unless ``--d-sae``, no pilot batch."""
        import torch

        return SweepConfig(
            targets=(self.k,),
            architectures=SAE_ARCHITECTURES,
            names=dict(zip(SAE_ARCHITECTURES, SAE_NAMES, strict=True)),
            d_sae=self.d_sae,
            d_sae_per_d_model=8,
            pilot_rows=0,
            l0_report=False,
            label="demo",
            dataset=self.dataset,
            # the demo leaves torch's thread count as it finds it
            threads=torch.get_num_threads(),
            **{name: getattr(self, name) for name in _SHARED},
        )

    def eval_budget(self) -> EvalBudget:
        """What ``run_evals`` and the k_hat report read per SAE."""
        return self.as_sweep().eval_budget()


# Demo flags that are sweep settings of the same name and meaning.
_SHARED = (
    *("tokens", "layer", "model", "model_path", "sources", "out", "context_size", "batch_tokens"),
    *("lr", "b_dec_init", "eval_batches", "eval_variance_batches", "eval_batch_prompts"),
    *("k_report_docs", "seed", "device", "plan_only"),
)


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    """Parse the demo's command-line flags (one per :class:`DemoConfig` field)."""
    import softsae_lens.experiments.demo as package  # its docstring describes the command

    parser = config_parser(DemoConfig, "python -m softsae_lens.demo", package.__doc__)
    return parse_config(parser, argv).cfg
