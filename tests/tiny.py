"""Tiny random models of every supported family (from :mod:`pruneframe.testing`) and a tiny tokenizer, built in code."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pruneframe.testing import COMMON, FAMILY_SPECS, tiny_model, tokens

#: family -> (config class, model class, settings); the models are :func:`pruneframe.testing.tiny_model`'s.
FAMILIES = FAMILY_SPECS

__all__ = ["COMMON", "FAMILIES", "tiny_model", "tokens", "PLAIN_LLAMA", "plain_llama", "tiny_tokenizer", "on_ranks"]


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

    mp.spawn(_rank_entry, args=(world_size, str(tmp_path / "init"), torch.get_num_threads(), str(tmp_path), worker, args), nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
