"""UnitGates: gradients reach every unit's gate correctly, and a new or changed gate vector is always the one used."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as forward_ad

from pruneframe.architectures import discover
from pruneframe.toolkit.gates import UnitGates
from pruneframe.pipeline.units import UnitKind
from tiny import FAMILIES, tiny_model, tokens


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward-mode internals
@pytest.mark.parametrize("fused_glu", [False, True])
@pytest.mark.parametrize("family", ["llama-gqa", "qwen3", "llama-mha-bias"])
def test_gate_gradient_matches_forward_mode_derivatives(family: str, fused_glu: bool) -> None:
    """Backward's d loss / d z == forward-mode directional derivatives for an FFN channel and a KV group of every layer."""
    model = tiny_model(family, attn_implementation="eager")  # forward-mode AD runs through eager attention
    for p in model.parameters():
        p.requires_grad_(False)
    units = discover(model)
    ids = tokens(2, 10)
    z = (0.25 + torch.rand(len(units), generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    picked = []
    for layer in range(units.num_layers):
        for kind in (UnitKind.FFN, UnitKind.KV):
            sl = units.slice(layer, kind)
            picked.append(sl.start + layer % (sl.stop - sl.start))
    with UnitGates(model, units, fused_glu=fused_glu) as gates:
        gates.set(z)
        (grad,) = torch.autograd.grad(_loss(model, ids), z)
        for unit in picked:
            tangent = torch.zeros_like(z)
            tangent[unit] = 1.0
            with forward_ad.dual_level(), torch.no_grad():
                gates.set(forward_ad.make_dual(z.detach(), tangent))
                derivative = forward_ad.unpack_dual(_loss(model, ids)).tangent
            assert float(grad[unit]) == pytest.approx(float(derivative), rel=1e-4, abs=1e-8), f"unit {unit}"
    assert all(float(grad[u]) != 0.0 for u in picked)


def test_gates_follow_the_current_vector() -> None:
    """A new vector, an in-place change and disabled() (also with a vector set inside it) are each seen by the next forward."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    ids = tokens(1, 8)
    with torch.no_grad():
        dense = model(ids).logits
        z = torch.ones(len(units))
        with UnitGates(model, units) as gates:
            gates.set(z)
            torch.testing.assert_close(model(ids).logits, dense, atol=0, rtol=0)
            z[units.slice(0, UnitKind.FFN)] = 0.0  # in place: the same tensor object
            masked = model(ids).logits
            assert not torch.allclose(masked, dense)
            gates.set(torch.ones(len(units)))  # a new object with the old values
            torch.testing.assert_close(model(ids).logits, dense, atol=0, rtol=0)
            gates.set(z)
            with gates.disabled():
                torch.testing.assert_close(model(ids).logits, dense, atol=0, rtol=0)
            torch.testing.assert_close(model(ids).logits, masked, atol=0, rtol=0)
            with gates.disabled():  # a vector set inside the block is dropped on exit
                gates.set(torch.ones(len(units)))
                torch.testing.assert_close(model(ids).logits, dense, atol=0, rtol=0)
            torch.testing.assert_close(model(ids).logits, masked, atol=0, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_glu_equals_hooks_bit_for_bit(family: str) -> None:
    """fused_glu changes neither the logits nor any gradient (gates, output scales, hidden states), and restores the MLPs."""
    model = tiny_model(family)
    for p in model.parameters():
        p.requires_grad_(False)
    units = discover(model)
    ids = tokens(2, 12)
    g = torch.Generator().manual_seed(5)
    z0 = torch.rand(len(units), generator=g)
    z0[::3] = 0.0  # hard zeros as in a mask
    scale0 = 1 + 0.1 * torch.randn(units.num_layers, model.config.hidden_size, generator=g)
    results = []
    glu = [ls.glu is not None for ls in units.layer_slices(model)]
    for fused in (False, True):
        z, scale = z0.clone().requires_grad_(True), scale0.clone().requires_grad_(True)
        with UnitGates(model, units, fused_glu=fused) as gates:
            assert [("forward" in vars(layer.mlp)) for layer in model.model.layers] == [fused and has_glu for has_glu in glu]
            gates.set(z)
            gates.set_output_scales(scale, None)
            logits = model(ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            grads = torch.autograd.grad(loss, [z, scale])
        results.append((logits.detach(), *grads))
        assert not any("forward" in vars(layer.mlp) for layer in model.model.layers)
    for want, got in zip(*results):
        assert torch.equal(want, got)
