"""Ground truth for SoftSAE's central claim: does ``k_hat`` track how many features an input holds?

SoftSAE predicts a per-input number of active latents ``k_hat``. Its claim is that ``k_hat``
follows the input's complexity and that this buys better reconstruction than a fixed k at the
same mean L0. Real LLM activations have no ground truth for "how many features are active";
synthetic activations do. This experiment builds data where the true number of active features
varies strongly from input to input and compares, on the same data stream (the very same
batches), with the same steps and learning rate:

* SoftSAE (architecture ``"soft"``, this package) with ``k`` = the true mean L0 (rounded);
* SAELens TopK with ``k`` = the true mean L0 (rounded), and TopK with ``k + 1``: TopK's
  realised L0 ends below its k (ReLU zeroes some of its top-k entries) while SoftSAE's ends
  near k, so the two TopKs bracket SoftSAE's L0 and the comparison is made at matched L0;
* SAELens BatchTopK with ``k`` = the true mean L0 (a float);
* the other SAELens architectures whose per-input L0 varies: Matryoshka BatchTopK (the same k as
  BatchTopK, nested widths ``d_sae/16, d_sae/4, d_sae``), JumpReLU (quadratic L0 loss at
  ``target_l0`` = k, the straight-through estimator reaching the input, threshold started at
  the target on a pilot batch) and matching pursuit (at most SoftSAE's ``k_max`` steps; its
  residual threshold steered toward k during training), set up as the SmolLM2 sweep sets them
  (:mod:`softsae_lens.experiments.sweep.calibrate`).

Every SAE's per-input L0 at inference (what ``encode`` gives) is scored against the true L0:
Spearman, the mean L0 per true-L0 bucket (a calibration table), and where its mean L0 landed
against the L0 it was set to reach (signed % off target).

Everything is built on :mod:`sae_lens.synthetic`: a :class:`~sae_lens.synthetic.FeatureDictionary`
(orthogonalised feature directions), an :class:`~sae_lens.synthetic.ActivationGenerator` whose
``modify_activations`` hook thins each input's firing features with a per-input "complexity",
:func:`~sae_lens.synthetic.train_toy_sae` for training and
:func:`~sae_lens.synthetic.eval_sae_on_synthetic_data` for explained variance, L0, MCC and F1.
Regimes (true L0 = number of nonzero ground-truth feature activations of an input): ``bimodal``
(half the inputs hold about 2 true features, half about 24) and ``spread`` (true L0 spreads
continuously from about 1 to about 26).

SoftSAE settings: the package defaults except ``k_max = 4k`` (complex inputs hold about
``1.9k`` features on average and up to ``3k``; the default ``2k`` caps them) and
``alpha_end = 0.05`` (:data:`~.settings.EXPERIMENT_SOFT_OVERRIDES`); ``--ablation`` compares
the alternatives.

Evaluation uses each SAE's *inference* form, obtained as SAELens does at the end of training:
``save_inference_model`` then ``SAE.load_from_disk`` (BatchTopK becomes a JumpReLU SAE with its
learned running threshold; TopK and SoftSAE fold their decoder norms).

Run (defaults: 3 regimes x 3 seeds x 7 SAEs, about an hour of one CPU core; matching pursuit's
greedy steps are a third of it)::

    python -m softsae_lens.experiments.synthetic [--json PATH] [--out DIR]
    python -m softsae_lens.experiments.synthetic --quick      # seconds; for the test suite
    python -m softsae_lens.experiments.synthetic --ablation   # SoftSAE variants vs TopK
    python -m softsae_lens.experiments.synthetic --replot out/synthetic/results.json  # redraw

SAEs train in ``--workers`` processes (default 2) of ``--threads`` PyTorch threads (default 1).
Outputs in ``--out`` (default ``out/synthetic``; ``out/synthetic_ablation`` with ``--ablation``,
``out/synthetic_quick`` with ``--quick``): ``results.json`` (or ``--json PATH``), ``results.md``
and the PNG plots of :mod:`.plots`.

Modules, each depending only on those above it: :mod:`.data` (regimes, generators, true L0),
:mod:`.settings` (what a run depends on), :mod:`.arms` (the SAEs under comparison),
:mod:`.metrics` (evaluation of one SAE), :mod:`.report` (aggregation, acceptance, Markdown; plain
dicts only) and :mod:`.plots` (PNGs from the JSON), :mod:`.runner` (jobs, worker processes, the
result), :mod:`.cli` (flags and files; ``__main__`` calls it).
"""

from softsae_lens.experiments.synthetic.arms import (
    ABLATION_DESCRIPTIONS,
    ABLATION_VARIANTS,
    ADAPTIVE_KINDS,
    MAIN_VARIANTS,
    SAE_KINDS,
    SAE_LABELS,
    build_sae,
    to_inference,
)
from softsae_lens.experiments.synthetic.cli import main, parse_args
from softsae_lens.experiments.synthetic.data import (
    ComplexityModifier,
    Regime,
    bucket_edges,
    build_data,
    l0_distribution,
    sample_true_l0,
)
from softsae_lens.experiments.synthetic.jobs import run_job
from softsae_lens.experiments.synthetic.metrics import correlations, evaluate
from softsae_lens.experiments.synthetic.plots import PLOT_FILES, make_plots
from softsae_lens.experiments.synthetic.report import markdown_report
from softsae_lens.experiments.synthetic.runner import run_experiment
from softsae_lens.experiments.synthetic.settings import (
    EXPERIMENT_SOFT_OVERRIDES,
    Settings,
    default_regimes,
    default_settings,
)
from softsae_lens.experiments.synthetic.summary import acceptance, aggregate

__all__ = [
    "ABLATION_DESCRIPTIONS",
    "ADAPTIVE_KINDS",
    "ABLATION_VARIANTS",
    "EXPERIMENT_SOFT_OVERRIDES",
    "MAIN_VARIANTS",
    "PLOT_FILES",
    "SAE_KINDS",
    "SAE_LABELS",
    "ComplexityModifier",
    "Regime",
    "Settings",
    "acceptance",
    "aggregate",
    "bucket_edges",
    "build_data",
    "build_sae",
    "correlations",
    "default_regimes",
    "default_settings",
    "evaluate",
    "l0_distribution",
    "main",
    "make_plots",
    "markdown_report",
    "parse_args",
    "run_experiment",
    "run_job",
    "sample_true_l0",
    "to_inference",
]
