"""Tiny random models of every supported family, built in code (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=3, max_position_embeddings=128)

FAMILIES = {
    # GQA, G = 3
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8)),
    # MHA, with MLP biases
    "llama-mha-bias": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=4, mlp_bias=True, attention_bias=True)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=None)),
    # q/k/v biases
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(num_attention_heads=6, num_key_value_heads=3, head_dim=8, tie_word_embeddings=True)),
    # q_norm / k_norm
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
}


def tiny_model(family: str = "llama-gqa", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised tiny model of ``family`` in eval mode, fp32."""
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # make norms non-trivial so gates and scales matter everywhere
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def tokens(n: int = 4, length: int = 16, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[n, length]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)
