"""Test helpers for plugin authors: tiny random models of every family and the checks a method must pass.

Use them in a plugin's own tests (no downloads, a few seconds on a CPU)::

    from pruneframe.testing import FAMILIES, check_method

    @pytest.mark.parametrize("family", FAMILIES)
    def test_my_method(family, tmp_path):
        check_method("my-method", family, tmp_path, config={"num_windows": 2})

:func:`check_scores` runs the method's scoring stage and checks one finite score per unit, the
same scores on a second run and the model's weights untouched. :func:`check_prune_fold_reload` runs
the whole prune: the mask meets the budget exactly, the folded model has exactly the parameter count
the mask implies and the logits of the dense model run with the mask as gates, and the saved
checkpoint reloads to identical logits. :func:`check_method` runs both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

__all__ = [
    "COMMON",
    "FAMILIES",
    "FAMILY_SPECS",
    "tiny_model",
    "tokens",
    "check_scores",
    "check_prune_fold_reload",
    "check_method",
]

#: Settings every tiny model shares.
COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=3, max_position_embeddings=128)

#: family -> (config class, model class, family-specific settings).
FAMILY_SPECS: dict[str, tuple[type, type, dict[str, Any]]] = {
    # GQA, G = 3
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8)),
    # MHA, with MLP and attention biases
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

#: The family names, for ``pytest.mark.parametrize``.
FAMILIES: tuple[str, ...] = tuple(sorted(FAMILY_SPECS))


def tiny_model(family: str = "llama-gqa", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A randomly initialised tiny model of ``family`` in eval mode, fp32, with non-trivial norms and biases."""
    if family not in FAMILY_SPECS:
        raise KeyError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    config_cls, model_cls, extra = FAMILY_SPECS[family]
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


def _context(model: torch.nn.Module, method: Any, calibration: torch.Tensor, budget: float) -> Any:
    from pruneframe.budget import make_budget, resolve
    from pruneframe.calibration import CalibrationData
    from pruneframe.host import PluginHost
    from pruneframe.methods import ScoringContext

    host = PluginHost.create()
    units = host.discover_units(model)
    minimum = method.minimum(units)
    target = resolve(make_budget(budget, "prunable"), units, minimum)
    cfg = method.config

    def project(scores: torch.Tensor) -> torch.Tensor:
        return host.project(scores.detach().float().cpu(), units, target, minimum, cfg.policy, cfg.scope)

    return host, ScoringContext(
        model=model, units=units, calibration=CalibrationData(calibration, name="tokens"), budget=target,
        minimum=minimum, project=project, progress=False,
    )


def check_scores(method: str, family: str = "llama-gqa", config: dict[str, Any] | None = None, budget: float = 0.6) -> torch.Tensor:
    """Score a tiny ``family`` model with ``method``; check shape, finiteness, repeatability, untouched weights.

    Returns the scores. Raises ``AssertionError`` naming what failed.
    """
    from pruneframe.host import PluginHost

    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method_obj = PluginHost.create().method(method, config)
    host, context = _context(model, method_obj, tokens(4, 16), budget)
    scores = host.score(method_obj, context)
    n = len(context.units)
    assert scores.shape == (n,), f"{method}: scores of shape {tuple(scores.shape)} for {n} units"
    assert torch.isfinite(scores).all(), f"{method}: non-finite scores on {family}"
    host2, context2 = _context(model, PluginHost.create().method(method, config), tokens(4, 16), budget)
    again = host2.score(host2.method(method, config), context2)
    torch.testing.assert_close(again, scores, msg=lambda m: f"{method}: scores differ between two runs on {family}: {m}")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{method}: scoring changed the model's {name}"
    return scores


def check_prune_fold_reload(
    method: str, family: str, folder: str | Path, config: dict[str, Any] | None = None, budget: float = 0.6
) -> Any:
    """Prune a tiny ``family`` model with ``method`` and check budget, size, fold exactness and checkpoint reload.

    Returns the :class:`~pruneframe.api.PruneResult`. Raises ``AssertionError`` naming what failed.
    """
    import pruneframe
    from pruneframe.budget import check_meets_budget
    from pruneframe.checkpoint import load_pruned
    from pruneframe.gates import gated
    from pruneframe.host import PluginHost

    model = tiny_model(family)
    result = pruneframe.prune(model, method=method, budget=budget, calibration=tokens(4, 16), config=config, progress=False)
    units = result.units
    minimum = PluginHost.create().method(method, config).minimum(units)
    check_meets_budget(result.mask, units.cost, result.report.budget_prunable_params, groups=units.groups, minimum=minimum)
    ids = tokens(2, 10, seed=5)
    with torch.no_grad(), gated(model, units, result.mask, result.recalibration):
        want = model(ids).logits
    with torch.no_grad():
        got = result.model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{method} on {family}: folded != gated dense: {m}")
    saved = result.save(Path(folder) / f"{method}-{family}")
    loaded, _ = load_pruned(saved)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, got, atol=0, rtol=0, msg=lambda m: f"{method} on {family}: reload differs: {m}")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in result.model.parameters())
    return result


def check_method(method: str, family: str, folder: str | Path, config: dict[str, Any] | None = None, budget: float = 0.6) -> None:
    """:func:`check_scores` and :func:`check_prune_fold_reload` for one method and family."""
    check_scores(method, family, config, budget)
    check_prune_fold_reload(method, family, folder, config, budget)
