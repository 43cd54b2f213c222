"""Bring SoftSAE checkpoints trained with the paper's own code into SAELens.

The paper's code (a fork of ``dictionary_learning``) saves a ``torch.save``d state dict ``ae.pt``
and, beside it, a ``config.json`` whose ``trainer`` entry describes the run. Two variants:

- LLM (``SoftSAE``): ``x_n = x / norm_factor``; ``pre = relu(W_enc (x_n - b_dec) + b_enc)``;
  ``k_hat = clamp(sigmoid(MLP(x_n - b_dec)) * k_max, 1, dict_size)``; hard top-``floor(k_hat)``
  per row; ``x_hat = W_dec f + b_dec``, returned in normalised units (``x_hat ~ x / norm_factor``).
- CLIP (``SoftTopKSAE``): the same, plus a ``shift_factor`` buffer: ``x_n = (x - shift_factor) /
  norm_factor``, and outputs denormalised back to raw units.

State dict keys (PyTorch ``Linear`` layout, ``weight`` is ``[out, in]``): ``encoder.weight``
``[d_sae, d_in]``, ``encoder.bias`` ``[d_sae]``, ``decoder.weight`` ``[d_in, d_sae]``, ``b_dec``
``[d_in]``, ``k_estimator.0.weight`` ``[d_sae, d_in]``, ``k_estimator.0.bias`` ``[d_sae]``,
``k_estimator.2.weight`` ``[1, d_sae]``, ``k_estimator.2.bias`` ``[1]``, scalar buffers ``k``,
``k_max``, ``alpha``, ``norm_factor`` and (CLIP) ``shift_factor`` (``[d_in]`` or a scalar).

The converted :class:`~softsae_lens.SoftSAE` takes and returns raw activations: with
``nf = norm_factor``, ``sf = shift_factor`` (0 for the LLM variant) and
``b_dec_raw = nf * b_dec + sf`` we have ``x_n - b_dec = (x - b_dec_raw) / nf``, so

    W_enc = encoder.weight.T / nf        b_enc = encoder.bias
    W_k_in = k_estimator.0.weight.T / nf  b_k_in = k_estimator.0.bias
    W_k_out = k_estimator.2.weight[0]     b_k_out = k_estimator.2.bias
    W_dec = decoder.weight.T * nf         b_dec = b_dec_raw

(the decoder gives ``nf * x_hat_n + sf``, the reconstruction in raw units). Feature activations
and ``k_hat`` are exactly the paper's; the reconstruction equals the CLIP variant's output and
``norm_factor`` times the LLM variant's (which is in normalised units). ``k_rounding="floor"``
reproduces the paper's selection: the paper keeps the top ``floor(clamp(k_hat, 1, d_sae))``
entries; SoftSAE keeps ``clamp(floor(k_hat), 1, floor(k_max))``, the same number because
``k_hat <= k_max <= d_sae``. Note that ``SoftSAE.predict_k`` returns the unclamped
``k_max * sigmoid(...)``: the paper's ``k_hat`` is ``clamp(predict_k(x), 1, d_sae)``.

Python::

    from softsae_lens.convert import convert_paper_checkpoint, load_paper_checkpoint
    sae = load_paper_checkpoint("run/trainer_0/ae.pt")  # in memory, no files written
    convert_paper_checkpoint("run/trainer_0/ae.pt", "saes/softsae-l12")  # writes a SAELens dir

Command line::

    python -m softsae_lens.convert run/trainer_0/ae.pt saes/softsae-l12 [--hook-name ...]

Modules: :mod:`~softsae_lens.convert.paper_format` reads and validates the paper's files
(``ae.pt``, ``config.json``, the hook name); :mod:`~softsae_lens.convert.to_softsae` folds them
into a SAELens SoftSAE and writes it; :mod:`~softsae_lens.convert.cli` is the command line.
"""

from softsae_lens.convert.paper_format import (
    CHECKPOINT_FILENAME,
    CONFIG_FILENAME,
    HookNameError,
    PaperCheckpointError,
    find_paper_config,
    paper_hook_name,
    read_paper_config,
    read_paper_state_dict,
    validate_state_dict,
)
from softsae_lens.convert.to_softsae import (
    DTYPES,
    PAPER_CLIP,
    PAPER_LLM,
    convert_paper_checkpoint,
    convert_paper_state_dict,
    fold_paper_weights,
    load_paper_checkpoint,
)

__all__ = [
    "CHECKPOINT_FILENAME",
    "CONFIG_FILENAME",
    "DTYPES",
    "PAPER_CLIP",
    "PAPER_LLM",
    "HookNameError",
    "PaperCheckpointError",
    "convert_paper_checkpoint",
    "convert_paper_state_dict",
    "find_paper_config",
    "fold_paper_weights",
    "load_paper_checkpoint",
    "paper_hook_name",
    "read_paper_config",
    "read_paper_state_dict",
    "validate_state_dict",
]
