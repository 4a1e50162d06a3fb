"""Random method settings, budgets and budget kinds through ``pruneframe.prune``: a valid result or a named error."""

from __future__ import annotations

import typing

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import pruneframe
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import BudgetError, check_mask, group_round_to, make_budget, resolve
from pruneframe.pipeline.calibration import InsufficientCalibrationError
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.vocab_method import VocabularyMethod
from tiny import tiny_model, tokens

HOST = PluginHost.create()
#: Every method but those that trim the vocabulary: they need the model's tokenizer, which these calls do not
#: pass (tests/test_vocab_method.py covers them, refusal without a tokenizer included).
METHODS = sorted(name for name, cls in HOST.methods().items() if not issubclass(cls, VocabularyMethod))
#: Small windows and loops, so an example takes well under a second; the fuzzed keys override them.
FAST = {"num_windows": 2, "num_samples": 2, "num_sequences": 2, "seq_len": 8, "epochs": 1, "rescale_sequences": 1, "batch_size": 2}
#: What ``prune`` may raise on bad input; anything else is a bug.
INPUT_ERRORS = (ValidationError, BudgetError, InsufficientCalibrationError)
MODEL = tiny_model()
UNITS = discover(MODEL)


def _literal_values(annotation) -> list:
    """Every Literal value inside ``annotation`` (so the fuzzer also hits the valid choices)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def _plausible(field) -> st.SearchStrategy:
    """Values a user would likely write: the field's choices, its default, small numbers of the default's type."""
    options = [st.sampled_from(_literal_values(field.annotation))] if _literal_values(field.annotation) else []
    default = field.get_default(call_default_factory=True)
    options.append(st.just(default))
    if isinstance(default, bool):
        options.append(st.booleans())
    elif isinstance(default, int):
        options.append(st.integers(1, 4))
    elif isinstance(default, float):
        options.append(st.floats(0.05, 1.0))
    return st.one_of(options)


def _values(field) -> st.SearchStrategy:
    """Mostly plausible values (three in four), else anything."""
    anything = st.one_of(
        st.none(),
        st.integers(-2, 6),
        st.floats(-1.5, 2.5),
        st.sampled_from([float("nan"), float("inf")]),
        st.text(max_size=4),
        st.just([0.9, 0.99]),
        st.booleans(),
    )
    return st.integers(0, 3).flatmap(lambda n: anything if n == 3 else _plausible(field))


@st.composite
def method_settings(draw) -> tuple[str, dict]:
    name = draw(st.sampled_from(METHODS))
    fields = HOST.methods()[name].Config.model_fields
    fast = {k: v for k, v in FAST.items() if k in fields}
    keys = draw(st.lists(st.sampled_from([*sorted(k for k in fields if k not in ("checkpoint_dir", "init_from")), "bogus"]), max_size=2, unique=True))
    return name, {**fast, **{k: draw(_values(fields.get(k) or fields["seed"])) for k in keys}}


_valid_budgets = st.one_of(
    st.tuples(st.sampled_from(["prunable", "total"]), st.floats(0.5, 1.0)),
    st.tuples(st.just("params"), st.integers(UNITS.total_params // 2, UNITS.total_params)),
)
#: Two in three budgets valid, the others anything a caller might pass.
budgets = st.one_of(
    _valid_budgets,
    _valid_budgets,
    st.tuples(st.sampled_from(["prunable", "total"]), st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0, 1, float("nan")]))),
    st.tuples(
        st.just("params"), st.one_of(st.integers(-10, UNITS.total_params + 10), st.floats(0, UNITS.total_params), st.sampled_from([float("nan"), float("inf")]))
    ),
)


#: The least share of examples that must prune (the rest may be refused as bad input): a fuzzer whose
#: every example is refused would test the refusals only.
MIN_PRUNED_SHARE = 0.25


def test_prune_returns_a_model_meeting_its_budget_or_names_the_bad_input() -> None:
    outcomes: list[str] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(method_settings(), budgets)
    def check(method, budget) -> None:
        name, config = method
        kind, value = budget
        try:
            result = pruneframe.prune(MODEL, name, value, calibration=tokens(8, 16), config=config, budget_kind=kind, host=HOST, progress=False)
        except INPUT_ERRORS as exc:
            assert str(exc)
            event(f"refused: {type(exc).__name__}")
            outcomes.append("refused")
            return
        event("pruned")
        report, mask = result.report, result.mask
        made = HOST.method(name, config)
        minimum, removal = made.minimum(UNITS), made.config.removal
        removable = made.removable_blocks(UNITS)
        target = resolve(make_budget(value, kind), UNITS, minimum, removable=removable)
        assert report.budget_prunable_params == target and report.kept_prunable_params == UNITS.kept_cost(mask)
        assert UNITS.budget_cost(mask) <= target
        # within budget and tight (no admissible addition still fits), in the method's removal mode
        check_mask(mask, UNITS, target, minimum, group_round_to(UNITS, made.config.round_to), removal, removable)
        assert sum(p.numel() for p in result.model.parameters()) == report.kept_params
        assert sum(p.numel() for p in MODEL.parameters()) == UNITS.total_params  # the dense model is untouched
        with torch.no_grad():
            assert torch.isfinite(result.model(tokens(1, 8)).logits).all()
        outcomes.append("pruned")

    check()
    pruned = outcomes.count("pruned")
    assert pruned >= MIN_PRUNED_SHARE * len(outcomes), f"only {pruned} of {len(outcomes)} examples pruned"
