"""Tiny random models of every supported family and a tiny tokenizer, built in code (no downloads)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
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
    # q/k norms, four norms per layer, scaled embeddings, sliding-window and full layers, one KV head
    # (so only FFN channels are prunable; a wider FFN leaves room for a keep-0.5 budget)
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        intermediate_size=160, num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], query_pre_attn_scalar=16,
    )),
    # fused qkv_proj and gate_up_proj, GQA
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
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


#: The settings of :func:`plain_llama`; its vocabulary covers every id of :func:`tiny_tokenizer`.
PLAIN_LLAMA = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def plain_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A 2-layer Llama with 4 query heads sharing 2 KV heads, transformers' own random init, eval mode, fp32."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**PLAIN_LLAMA, **overrides})).eval()


def tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer trained in code (every string is tokenizable), called ``name``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", name_or_path=name)


def _rank_entry(rank: int, world_size: int, init_file: str, threads: int, out_dir: str, worker, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)  # as the calling process: kernels split their sums by thread
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(worker(*args), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def on_ranks(world_size: int, tmp_path, worker, *args) -> list:
    """``worker(*args)`` on ``world_size`` spawned Gloo ranks; each rank's return value, in rank order.

    ``worker`` must be a module-level function (spawned processes import it by name).
    """
    import torch.multiprocessing as mp

    mp.spawn(_rank_entry, args=(world_size, str(tmp_path / "init"), torch.get_num_threads(), str(tmp_path), worker, args),
             nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
