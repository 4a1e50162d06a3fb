"""Test helpers for plugin authors: tiny random models of every family and the checks a method must pass.

Use them in a plugin's own tests (no downloads, a few seconds on a CPU)::

    from pruneframe.testing import FAMILIES, check_method

    @pytest.mark.parametrize("family", FAMILIES)
    def test_my_method(family, tmp_path):
        check_method("my-method", family, tmp_path, config={"num_windows": 2})

The tiny models come from the architecture adapters (:meth:`ArchitectureAdapter.tiny_models
<pruneframe.architectures.ArchitectureAdapter.tiny_models>`): the built-in families' and those of every
installed plugin, so a family a plugin adds gets the same checks as the built-in ones.
:func:`check_scores` runs the method's scoring stage and checks one finite score per unit, the
same scores on a second run and the model's weights untouched. :func:`check_prune_fold_reload` runs
the whole prune: the mask meets the budget exactly, the folded model has exactly the parameter count
the mask implies and the logits of the dense model run with the mask as gates, and the saved
checkpoint reloads to identical logits, with :func:`~pruneframe.checkpoint.load_pruned` and with
``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``. :func:`check_method` runs both.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pruneframe.pipeline.host import PluginHost

__all__ = [
    "COMMON",
    "FAMILIES",  # noqa: F822 (built on first use by the module's __getattr__)
    "FAMILY_SPECS",  # noqa: F822
    "tiny_families",
    "tiny_model",
    "tokens",
    "check_scores",
    "check_prune_fold_reload",
    "check_method",
]

#: Settings every tiny model shares (an adapter's :meth:`tiny_models` settings are laid over them).
COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=3, max_position_embeddings=128)

Spec = tuple[type, type, dict[str, Any]]


def tiny_families(host: PluginHost | None = None) -> dict[str, Spec]:
    """Every tiny model the registered adapters describe: name -> (config class, model class, settings).

    From ``host``'s adapters, else from a fresh host with the installed plugins; a plugin's adapter
    comes before the core's, so it may redefine a name.
    """
    from pruneframe.pipeline.host import PluginHost

    out: dict[str, Spec] = {}
    for adapter in (host or PluginHost.create()).adapters():
        for name, (model_cls, settings) in adapter.tiny_models().items():
            out.setdefault(name, (model_cls.config_class, model_cls, dict(settings)))
    return out


@functools.cache
def _installed() -> dict[str, Spec]:
    return tiny_families()


def __getattr__(name: str) -> Any:
    """``FAMILY_SPECS`` and ``FAMILIES``, read from the installed adapters when first asked for."""
    if name == "FAMILY_SPECS":  # family -> (config class, model class, family-specific settings)
        return dict(_installed())
    if name == "FAMILIES":  # the family names, for ``pytest.mark.parametrize``
        return tuple(sorted(_installed()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tiny_model(family: str = "llama-gqa", seed: int = 0, host: PluginHost | None = None, **overrides: Any) -> torch.nn.Module:
    """A randomly initialised tiny model of ``family`` in eval mode, fp32, with non-trivial norms and biases.

    ``family`` is a name from :func:`tiny_families` (of ``host``, else of the installed plugins).
    """
    specs = tiny_families(host) if host is not None else _installed()
    if family not in specs and host is None:
        specs = tiny_families()  # a plugin installed since the first look
    if family not in specs:
        raise KeyError(f"unknown family {family!r}; expected one of {', '.join(sorted(specs))}")
    config_cls, model_cls, extra = specs[family]
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


def _context(model: torch.nn.Module, method: Any, calibration: torch.Tensor, budget: float, host: PluginHost | None) -> Any:
    from pruneframe.pipeline.budget import make_budget, resolve
    from pruneframe.pipeline.calibration import CalibrationData
    from pruneframe.pipeline.host import PluginHost
    from pruneframe.pipeline.methods import ScoringContext

    host = host or PluginHost.create()
    units = host.discover_units(model)
    minimum = method.minimum(units)
    cfg = method.config
    removable = method.removable_blocks(units)
    target = resolve(make_budget(budget, "prunable"), units, minimum, removable=removable)

    def project(scores: torch.Tensor) -> torch.Tensor:
        return host.project(scores.detach().float().cpu(), units, target, minimum, cfg.policy, cfg.scope, removal=cfg.removal, removable=removable)

    return host, ScoringContext(
        model=model,
        units=units,
        calibration=CalibrationData(calibration, name="tokens"),
        budget=target,
        minimum=minimum,
        project=project,
        progress=False,
    )


def check_scores(
    method: str,
    family: str = "llama-gqa",
    config: dict[str, Any] | None = None,
    budget: float = 0.6,
    host: PluginHost | None = None,
) -> torch.Tensor:
    """Score a tiny ``family`` model with ``method``; check shape, finiteness, repeatability, untouched weights.

    ``host`` supplies the method and the family (default: the installed plugins). Returns the scores.
    Raises ``AssertionError`` naming what failed.
    """
    from pruneframe.pipeline.host import PluginHost

    def fresh() -> PluginHost:
        return host or PluginHost.create()

    model = tiny_model(family, host=host)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method_obj = fresh().method(method, config)
    first, context = _context(model, method_obj, tokens(4, 16), budget, fresh())
    scores = first.score(method_obj, context)
    n = len(context.units)
    assert scores.shape == (n,), f"{method}: scores of shape {tuple(scores.shape)} for {n} units"
    assert torch.isfinite(scores).all(), f"{method}: non-finite scores on {family}"
    second, context2 = _context(model, fresh().method(method, config), tokens(4, 16), budget, fresh())
    again = second.score(second.method(method, config), context2)
    torch.testing.assert_close(again, scores, msg=lambda m: f"{method}: scores differ between two runs on {family}: {m}")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{method}: scoring changed the model's {name}"
    return scores


def check_prune_fold_reload(
    method: str,
    family: str,
    folder: str | Path,
    config: dict[str, Any] | None = None,
    budget: float = 0.6,
    host: PluginHost | None = None,
) -> Any:
    """Prune a tiny ``family`` model with ``method`` and check budget, size, fold exactness and checkpoint reload.

    The checkpoint must reload to the folded model's logits both with
    :func:`~pruneframe.checkpoint.load_pruned` (exactly) and through transformers with the modeling
    code it ships (``trust_remote_code=True``; within 1e-5). ``host`` supplies the method and the
    family (default: the installed plugins). Returns the :class:`~pruneframe.api.PruneResult`.
    Raises ``AssertionError`` naming what failed.
    """
    from transformers import AutoModelForCausalLM

    import pruneframe
    from pruneframe.pipeline.budget import check_mask
    from pruneframe.checkpoint import load_pruned
    from pruneframe.toolkit.gates import gated
    from pruneframe.pipeline.host import PluginHost

    model = tiny_model(family, host=host)
    result = pruneframe.prune(model, method=method, budget=budget, calibration=tokens(4, 16), config=config, progress=False, host=host)
    units = result.units
    made = (host or PluginHost.create()).method(method, config)
    check_mask(result.mask, units, result.report.budget_prunable_params, made.minimum(units), None, made.config.removal, made.removable_blocks(units))
    ids = tokens(2, 10, seed=5)
    with torch.no_grad(), gated(model, units, result.mask, result.recalibration):
        want = model(ids).logits
    with torch.no_grad():
        got = result.model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{method} on {family}: folded != gated dense: {m}")
    saved = result.save(Path(folder) / f"{method}-{family}")
    loaded, _ = load_pruned(saved, host=host)
    remote = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, got, atol=0, rtol=0, msg=lambda m: f"{method} on {family}: reload differs: {m}")
        torch.testing.assert_close(remote(ids).logits, got, atol=1e-5, rtol=0, msg=lambda m: f"{method} on {family}: trust_remote_code reload differs: {m}")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in result.model.parameters())
    return result


def check_method(
    method: str,
    family: str,
    folder: str | Path,
    config: dict[str, Any] | None = None,
    budget: float = 0.6,
    host: PluginHost | None = None,
) -> None:
    """:func:`check_scores` and :func:`check_prune_fold_reload` for one method and family."""
    check_scores(method, family, config, budget, host)
    check_prune_fold_reload(method, family, folder, config, budget, host)
