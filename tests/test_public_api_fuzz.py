"""Random method settings, budgets and budget kinds through ``pruneframe.prune``: a valid result or a named error."""

from __future__ import annotations

import typing

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import pruneframe
from pruneframe.architectures import discover
from pruneframe.budget import BudgetError, make_budget, resolve
from pruneframe.calibration import InsufficientCalibrationError
from pruneframe.host import PluginHost
from tiny import tiny_model, tokens

HOST = PluginHost.create()
METHODS = sorted(HOST.methods())
#: Small windows and loops, so an example takes well under a second; the fuzzed keys override them.
FAST = {"num_windows": 2, "num_samples": 2, "num_sequences": 2, "seq_len": 8, "epochs": 1, "rescale_sequences": 1,
        "batch_size": 2}
#: What ``prune`` may raise on bad input; anything else is a bug.
INPUT_ERRORS = (ValidationError, BudgetError, InsufficientCalibrationError)
MODEL = tiny_model()
UNITS = discover(MODEL)


def _literal_values(annotation) -> list:
    """Every Literal value inside ``annotation`` (so the fuzzer also hits the valid choices)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def _values(field) -> st.SearchStrategy:
    """Half plausible values (the field's choices, small positive numbers), half anything."""
    choices = _literal_values(field.annotation)
    plausible = st.one_of(st.sampled_from(choices), st.booleans()) if choices else st.one_of(
        st.integers(1, 4), st.floats(0.05, 1.0), st.booleans())
    anything = st.one_of(
        st.none(), st.integers(-2, 6), st.floats(-1.5, 2.5), st.sampled_from([float("nan"), float("inf")]),
        st.text(max_size=4), st.just([0.9, 0.99]),
    )
    return st.booleans().flatmap(lambda ok: plausible if ok else anything)


@st.composite
def method_settings(draw) -> tuple[str, dict]:
    name = draw(st.sampled_from(METHODS))
    fields = HOST.methods()[name].Config.model_fields
    fast = {k: v for k, v in FAST.items() if k in fields}
    keys = draw(st.lists(st.sampled_from([*sorted(k for k in fields if k not in ("checkpoint_dir", "init_from")), "bogus"]),
                         max_size=2, unique=True))
    return name, {**fast, **{k: draw(_values(fields.get(k) or fields["seed"])) for k in keys}}


budgets = st.one_of(
    st.tuples(st.sampled_from(["prunable", "total"]), st.floats(0.5, 1.0)),
    st.tuples(st.just("params"), st.integers(UNITS.total_params // 2, UNITS.total_params)),
    st.tuples(st.sampled_from(["prunable", "total"]), st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0, 1, float("nan")]))),
    st.tuples(st.just("params"), st.one_of(st.integers(-10, UNITS.total_params + 10), st.floats(0, UNITS.total_params),
                                           st.sampled_from([float("nan"), float("inf")]))),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method_settings(), budgets)
def test_prune_returns_a_model_meeting_its_budget_or_names_the_bad_input(method, budget) -> None:
    name, config = method
    kind, value = budget
    try:
        result = pruneframe.prune(MODEL, name, value, calibration=tokens(8, 16), config=config, budget_kind=kind,
                                  host=HOST, progress=False)
    except INPUT_ERRORS as exc:
        assert str(exc)
        event(f"refused: {type(exc).__name__}")
        return
    event("pruned")
    report, mask = result.report, result.mask
    target = resolve(make_budget(value, kind), UNITS, HOST.method(name, config).minimum(UNITS))
    kept = UNITS.kept_cost(mask)
    assert report.budget_prunable_params == target and report.kept_prunable_params == kept <= target
    dropped = UNITS.cost[~mask]
    assert dropped.numel() == 0 or int(dropped.min()) > target - kept  # no dropped unit still fits
    assert sum(p.numel() for p in result.model.parameters()) == report.kept_params
    assert sum(p.numel() for p in MODEL.parameters()) == UNITS.total_params  # the dense model is untouched
    with torch.no_grad():
        assert torch.isfinite(result.model(tokens(1, 8)).logits).all()
