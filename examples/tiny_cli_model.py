"""Write a tiny random language model and a tokenized dataset that SAELens's CLI loads offline.

    python examples/tiny_cli_model.py --out out/tiny
    torchrun --nproc_per_node 2 -m softsae_lens.train --architecture soft --d_in 32 --d_sae 128 --k 8 \\
        --model_class_name AutoModelForCausalLM --model_name out/tiny/model --hook_name transformer.h.0 \\
        --dataset_path out/tiny/tokens --context_size 16 --training_tokens 5120 \\
        --train_batch_size_tokens 128 --n_batches_in_buffer 8 --store_batch_size_prompts 8 \\
        --device cpu --log_to_wandb false --checkpoint_path out/tiny/ckpt --output_path out/tiny/sae

SAELens's CLI builds its model from ``--model_class_name`` and ``--model_name``; with
``AutoModelForCausalLM`` the name may be a local Hugging Face folder, which needs no network.
This script writes such a folder (a randomly initialised 2-layer GPT-2 with d_model 32, a
97-token word-level tokenizer) and a pre-tokenized dataset (a parquet file of random token rows)
that ``--dataset_path`` reads as a local dataset. Useful to try the CLI, and the data-parallel
path under torchrun, in seconds on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

VOCAB = 97
CONTEXT = 16
D_MODEL = 32


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (d_model 32, vocab 97, context 16) with a tokenizer, in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    special = "<|endoftext|>"
    vocab = {special: 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=D_MODEL,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_token_dataset(folder: Path, rows: int = 512, seed: int = 0) -> Path:
    """``rows`` rows of ``CONTEXT`` random token ids as ``folder/train.parquet``."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (rows, CONTEXT), generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict({"tokens": tokens.tolist()}).to_parquet(str(folder / "train.parquet"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="out/tiny", help="folder for model/ and tokens/")
    parser.add_argument("--rows", type=int, default=512, help="rows of the token dataset")
    args = parser.parse_args()
    if args.rows <= 0:
        parser.error(f"--rows must be a positive integer, got --rows {args.rows}")
    out = Path(args.out)
    print(f"model:   {write_tiny_model(out / 'model')}")
    print(f"dataset: {write_token_dataset(out / 'tokens', rows=args.rows)}")


if __name__ == "__main__":
    main()
