"""SoftSAE against every SAELens training architecture across target L0s, on a real model.

``python -m softsae_lens.experiments.sweep`` trains, on one activation stream (SAELens's
``MultiSAETrainingRunner``: one model forward feeds every SAE the same activations), SoftSAE
and SAELens's ``topk``, ``batchtopk``, ``matryoshka_batchtopk``, ``jumprelu`` and
``matching_pursuit`` at each target L0 (default 16, 32, 64), all with the same width, learning
rate, steps, normalisation and data, SoftSAE with its package defaults. JumpReLU and matching
pursuit have no k: their sparsity knobs are set toward each target (see :mod:`.calibrate`)
and the table reports where L0 actually landed. Every SAE is then scored by
``sae_lens.evals.run_evals`` on held-out documents (explained variance, MSE, CE-loss score,
KL-div score, L0, dead latents), each SoftSAE's per-token k_hat is compared with the
token's surprisal and the next-token loss, and so is every SAE's per-token L0 (does any
architecture's L0 follow the token's complexity?).

Before training it prints what the run will cost, from one timed step of every SAE and one
timed model forward (``--plan-only`` stops there). Writes ``out/sweep/``: ``results.json``,
``results.md``, ``pareto.png`` (L0 against explained variance, CE-loss score and KL-div score,
one line per architecture), one ``pareto_<metric>.png`` per metric, and the trained SAEs in
``saes/<architecture>-<target>`` (``SAE.load_from_disk`` after ``import softsae_lens``).

Modules: :mod:`.config` (flags, SAE configs), :mod:`.calibrate` (L0 targeting without a k),
:mod:`.saes` (pilot batch, untrained SAEs), :mod:`.plan` (predicted costs), :mod:`.run` (the
LM-comparison pipeline, of which the demo is a preset), :mod:`.report` (tables and plots).
"""
