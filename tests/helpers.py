"""Builders and constants the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- a tiny HookedSAETransformer
# (random tokens; no tokenizer)

D_MODEL = 32
CONTEXT = 16
VOCAB = 97


HOOK = "blocks.0.hook_resid_post"


def build_tiny_model(
    device="cpu", *, n_layers=2, n_ctx=CONTEXT, d_vocab=VOCAB, seed=0, tokenizer=None
):
    """A small, randomly initialised HookedSAETransformer (no hub access); ``device=None`` is
    TransformerLens's default device."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=D_MODEL,
        n_ctx=n_ctx,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        **({} if device is None else {"device": device}),
    )
    return HookedSAETransformer(cfg, tokenizer=tokenizer).eval()


def tiny_runner_cfg(output_path, **overrides):
    """A LanguageModelSAERunnerConfig for a 40-step SoftSAE run on the tiny model."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from softsae_lens import SoftTrainingSAEConfig

    base = dict(
        sae=SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=128, k=8),
        model_name="tiny-random",
        hook_name=HOOK,
        dataset_path="local-random-tokens",
        is_dataset_tokenized=True,
        context_size=CONTEXT,
        training_tokens=CONTEXT * 320,
        train_batch_size_tokens=128,
        n_batches_in_buffer=8,
        store_batch_size_prompts=8,
        device="cpu",
        lr=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None if output_path is None else str(output_path),
        n_checkpoints=0,
        save_final_checkpoint=False,
    )
    base.update(overrides)
    return LanguageModelSAERunnerConfig(**base)


def train_step_input(x, step=0, dead=None):
    """A SAELens ``TrainStepInput`` as the trainer builds it (no coefficients, not logging)."""
    from sae_lens.saes.sae import TrainStepInput

    return TrainStepInput(
        sae_in=x,
        coefficients={},
        dead_neuron_mask=dead,
        n_training_steps=step,
        is_logging_step=False,
    )


def token_dataset(n_rows: int = 256, seed: int = 0):
    """A pre-tokenized ``datasets.Dataset`` of random tokens for the tiny model."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (n_rows, CONTEXT), generator=g)
    return Dataset.from_dict({"tokens": tokens.tolist()})


# ---------------------------------------------------------------- a random training SoftSAE


def make_training_sae(d_in=D_MODEL, d_sae=128, k=8, seed=0, **kwargs):
    """A training SoftSAE with non-trivial weights (so k_hat varies and norms are not 1)."""
    from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig

    torch.manual_seed(seed)
    kwargs.setdefault("total_training_steps", 100)
    sae = SoftTrainingSAE(SoftTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **kwargs))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(d_sae, 1) * 2 + 0.5)
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
        sae.W_k_out.normal_(0, 0.5)
        sae.b_k_in.normal_(0, 0.1)
    sae.cfg.metadata.hook_name = HOOK
    return sae


def inference_copy(sae, tmp_path):
    """``sae`` saved as an inference SAE and loaded back with SAELens."""
    from sae_lens import SAE

    sae.save_inference_model(tmp_path / "inference")
    return SAE.load_from_disk(tmp_path / "inference")


# ---------------------------------------------------------------- a tiny tokenizer and LM on real text
# A byte-level BPE tokenizer trained in a fraction of a second on Python's own
# ``pydoc_data.topics``, with BOS and EOS tokens, and a small random HookedSAETransformer whose
# vocabulary matches it: the corpus's pre-tokenisation, SAELens's activation store and the
# analysis tools run on real text with nothing from the hub.

TINY_VOCAB = 320
TINY_D_MODEL = D_MODEL  # tiny_lm is build_tiny_model with a tokenizer
TINY_CONTEXT = 32


@functools.lru_cache(maxsize=1)
def _trained_backend():
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([topics[key] for key in sorted(topics)], trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=1)
def _saved_folder() -> str:
    import tempfile

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # Saved and reloaded so the tokenizer knows its folder (name_or_path): TransformerLens
    # reloads it from there with add_bos_token=True.
    folder = tempfile.mkdtemp(prefix="softsae-tiny-tokenizer-")
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_backend()),
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    ).save_pretrained(folder)
    return folder


def tiny_tokenizer():
    """A fresh fast tokenizer loaded from a local folder (BOS ``<bos>`` = 1, EOS = 2)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_saved_folder())


def tiny_lm(n_layers: int = 2, seed: int = 0):
    """A random ``HookedSAETransformer`` with :func:`tiny_tokenizer` as its tokenizer."""
    tokenizer = tiny_tokenizer()
    return build_tiny_model(
        None,
        n_layers=n_layers,
        n_ctx=TINY_CONTEXT * 4,
        d_vocab=len(tokenizer),
        seed=seed,
        tokenizer=tokenizer,
    )


# ---------------------------------------------------------------- a tiny Hugging Face model on disk
# A randomly initialised Llama (2 layers, d_model 32) with a real tokenizer saved to a folder and
# booted from there as a user boots a local model; write_tiny_gguf writes the same model as a
# GGUF file (Q8_0 matrices, llama.cpp's converter's layout) with the ``gguf`` package.

HF_D_MODEL = 32
HF_N_LAYERS = 2
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
        hidden_size=HF_D_MODEL,
        intermediate_size=64,
        num_hidden_layers=HF_N_LAYERS,
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
    sae = SoftSAE(SoftSAEConfig(d_in=HF_D_MODEL, d_sae=d_sae, k=k))
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


# ---------------------------------------------------------------- the analysis pages and CLI


class _Checker(HTMLParser):
    """Balanced tags, and the text of every token span (line breaks as newlines)."""

    VOID = {"br", "meta", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.errors = []
        self.tokens = []  # (attrs, text)
        self._tok_depth = None
        self._skip_depth = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.VOID:
            if tag == "br" and self._tok_depth is not None:
                self.tokens[-1][1].append("\n")
            return
        self.stack.append(tag)
        classes = (attrs.get("class") or "").split()
        if tag == "span" and "tok" in classes:
            self._tok_depth = len(self.stack)
            self.tokens.append((attrs, []))
        elif self._tok_depth is not None and ({"nl", "mark"} & set(classes)):
            self._skip_depth = len(self.stack)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with open {self.stack[-3:]}")
            return
        if self._skip_depth == len(self.stack):
            self._skip_depth = None
        if self._tok_depth == len(self.stack):
            self._tok_depth = None
        self.stack.pop()

    def handle_data(self, data):
        if self._tok_depth is not None and self._skip_depth is None:
            self.tokens[-1][1].append(data)


def parse_html(text):
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return [(attrs, "".join(parts)) for attrs, parts in checker.tokens]


def run_analyze(args, cwd, **env):
    """``python -m softsae_lens.analyze ARGS`` in a fresh process, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "softsae_lens.analyze", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
