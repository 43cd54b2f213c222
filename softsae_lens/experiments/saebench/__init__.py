"""SAEBench's offline evals on saved SAEs of any architecture (SoftSAE included), on a local model.

``python -m softsae_lens.experiments.saebench`` (``make saebench``) runs, in SAEBench's own
environment (``make saebench-env``: sae-bench 0.6.0 pins numpy<2, datasets<4, pyarrow<26):

* ``core``: reconstruction (explained variance, MSE, cosine), sparsity (L0) and downstream CE/KL
  with the SAE spliced in, on local text (SAELens's ``ActivationsStore`` over a local dataset);
* ``sparse_probing_sae_probes``: the ``sae-probes`` wheel's own binary datasets (a documented
  subset), top-k latent probes at SAEBench's k values;
* ``absorption``: first-letter spelling over the tokenizer's vocabulary (weak below ~1B parameters
  and 16k latents, by SAEBench's own README: reported with that caveat);
* ``meta_structure``: a small SAE trained on the decoder rows;
* ``mdl``: description length of quantised latents on local text;

and writes ``results.json``, ``results.md`` and ``plot.png`` under ``out/saebench/``, with
SoftSAE's per-token ``k_hat`` statistics. No eval reaches the hub: every SAEBench entry point that
loads a model by name (``HookedTransformer.from_pretrained_no_processing`` in sae-probes,
absorption and mdl) or a dataset by name is bypassed by calling the function one level down with
the local model or dataset as an argument.

``--quick`` builds a tiny random HookedTransformer (SmolLM2's tokenizer, first-letter directions
planted in its embedding so that absorption has features to find), caches its activations with
the package's arrays-on-disk path, trains tiny SAEs with
:func:`softsae_lens.training.on_arrays.train_on_activations` and runs every eval: the path of
``make test``. ``--plan-only`` prints the predicted cost.

Importing this package imports nothing heavy: ``--help`` works in the main environment too.
"""
