"""A tiny randomly initialised Hugging Face causal LM with a real tokenizer, built offline.

Tests that need a ``TransformerBridge`` (SAELens's ``SAETransformerBridge``) save this model to a
temporary folder and boot it from there, the way a user boots a local model: a Llama with 2
layers and d_model 32, and a byte-level BPE tokenizer trained in a fraction of a second on text
that ships with Python, with its own BOS, EOS and PAD tokens. :func:`write_tiny_gguf` writes the
same model as a GGUF file (Q8_0 matrices, the layout llama.cpp's converter writes) with the
``gguf`` package, so the GGUF path runs in seconds too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

D_MODEL = 32
N_LAYERS = 2
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
TEXTS = [
    "The cat sat on the mat. In 1969, 3 people flew to the Moon!",
    "def f(x):\n    return x + 1  # add one",
]


def _training_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def build_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the standard library's pydoc
    topics, with BOS, EOS and PAD special tokens (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def build_tiny_hf_model(folder: Path | str, seed: int = 0) -> Path:
    """Save a random 2-layer Llama (d_model 32) and its tokenizer to ``folder``; return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Hugging Face Llama parameter names -> GGUF tensor names (llama.cpp's convention).
_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _rope_permute(weights, n_head: int):
    # llama.cpp stores q/k rows interleaved for its rotary kernel; transformers undoes this.
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(folder: Path, path: Path) -> Path:
    """Write the model saved in ``folder`` (by :func:`build_tiny_hf_model`) as a GGUF file:
    llama architecture, byte-level BPE ("gpt2") tokenizer, Q8_0 matrices, float32 norms."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    cfg = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    )
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    for name, tensor in load_file(folder / "model.safetensors").items():
        array = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        else:  # model.layers.<i>.<module path>.weight
            parts = name.split(".")
            gguf_name = f"blk.{parts[2]}.{_GGUF_NAMES['.'.join(parts[3:-1])]}.weight"
        if ".attn_q." in gguf_name:
            array = _rope_permute(array, cfg["num_attention_heads"])
        elif ".attn_k." in gguf_name:
            array = _rope_permute(array, cfg["num_key_value_heads"])
        if array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(array, q8)
            writer.add_tensor(gguf_name, packed, raw_shape=packed.shape, raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_soft_sae(hook_name: str = "blocks.0.hook_out", d_sae: int = 64, k: int = 4):
    """A random SoftSAE for the tiny model whose k_hat varies from token to token."""
    from softsae_lens import SoftSAE, SoftSAEConfig

    torch.manual_seed(0)
    sae = SoftSAE(SoftSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.W_k_out.normal_(0, 0.5)
    sae.cfg.metadata.hook_name = hook_name
    sae.cfg.metadata.context_size = 16
    sae.cfg.metadata.prepend_bos = True
    return sae.eval()


def boot_plain_bridge(folder: Path):
    """SAELens's own ``SAETransformerBridge`` on ``folder``, as a user would boot it."""
    from sae_lens import SAETransformerBridge

    return SAETransformerBridge.boot_transformers(
        str(folder), device="cpu", dtype=torch.float32
    ).eval()
