"""Optimal Brain Surgeon for whole input columns of a linear layer (structured OBS; pure functions).

A linear layer ``y = W x`` sees calibration inputs with Gram matrix ``H = sum x x^T``. Removing a group
``G`` of input columns and updating the remaining ones to keep ``W x`` as well as possible costs, at
best (the grouped OBS error),

    E(G) = tr( W[:, G] (Hinv[G, G])^-1 W[:, G]^T ),    Hinv = (H + lam I)^-1,

and the best update of the whole matrix is

    delta W = - W[:, G] (Hinv[G, G])^-1 Hinv[G, :],

which zeroes ``W[:, G]`` and moves the rest. After it, the inverse of the Hessian restricted to the
remaining columns is ``Hinv - Hinv[:, G] (Hinv[G, G])^-1 Hinv[G, :]`` (with ``G``'s rows and columns
zero), so groups can be removed one after the other without inverting again. Removing groups one after
the other with these updates leaves the same weights as removing their union at once, and those are
the ridge least-squares solution over the kept columns,

    W'_k = argmin || X W^T - X_k W'_k^T ||^2 + lam || W'_k - W_k ||^2

(``X`` the inputs as rows; :func:`pruneframe.toolkit.refit.ridge_refit_columns` solves the same problem,
with ``lam`` taken from the kept diagonal instead of the whole one).

``lam = damping * mean(diag(H))`` over every column (SparseGPT's and SlimGPT's ``percdamp``); a column
whose input is always zero gets the mean of the other diagonal entries first, so ``H + lam I`` is
positive definite. Everything is computed in float64 on the weight's device.

:func:`greedy_removal` is SlimGPT's batched greedy pruning: at every step each remaining unit's grouped
error is computed with the current weights and inverse, and the ``size`` units of least error are
removed together (one unit per step for attention heads; a shrinking number of FFN channels per step,
:func:`dynamic_group_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GreedyRemoval",
    "compensate",
    "damped_inverse",
    "damping_strength",
    "dead_columns",
    "dynamic_group_sizes",
    "greedy_removal",
    "group_errors",
    "remove_columns",
]

#: The official SlimGPT code's dynamic group size for FFN channels: the first group is half of what
#: exceeds this many channels, each later group half of what the previous one exceeded it by.
_SHRINK = 512


def dead_columns(gram: torch.Tensor) -> torch.Tensor:
    """Columns whose input was zero on every calibration token (a zero diagonal entry)."""
    return gram.diagonal() == 0


def _filled(gram: torch.Tensor) -> torch.Tensor:
    """``gram`` in float64 with every dead column's diagonal entry set to the mean of the live ones (1 if none)."""
    h = gram.detach().to(torch.float64).clone()
    dead = dead_columns(h)
    if bool(dead.any()):
        live = h.diagonal()[~dead]
        fill = float(live.mean()) if live.numel() else 1.0
        idx = torch.nonzero(dead).flatten()
        h[idx, idx] = fill
    return h


def damping_strength(gram: torch.Tensor, damping: float) -> float:
    """``lam = damping * mean(diag(H))``, with dead columns filled as in :func:`damped_inverse`."""
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    return damping * float(_filled(gram).diagonal().mean())


def damped_inverse(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H + lam I)^-1`` in float64 (see the module docstring for ``lam`` and dead columns).

    Args:
        gram: ``[n, n]`` symmetric positive semi-definite ``sum x x^T``.
        damping: relative damping, > 0.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square, got {tuple(gram.shape)}")
    h = _filled(gram)
    h.diagonal().add_(damping_strength(gram, damping))
    return torch.cholesky_inverse(torch.linalg.cholesky(h))


def _columns_solve(hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(Hinv[G, G])^-1 Hinv[G, :]`` for the columns ``G = cols``."""
    factor = torch.linalg.cholesky(hinv[cols][:, cols])
    return torch.cholesky_solve(hinv[cols], factor)


def compensate(weight: torch.Tensor, hinv: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``weight`` after removing the columns ``removed`` at once with the grouped OBS update.

    Args:
        weight: ``[out, n]``.
        hinv: ``[n, n]`` damped inverse Hessian of the layer's input (:func:`damped_inverse`).
        removed: int64 column indices.

    Returns a new ``[out, n]`` tensor in ``weight``'s dtype: the kept columns updated, the removed ones
    copied unchanged (a fold ignores them).
    """
    out = weight.detach().clone()
    removed = removed.long().to(weight.device)
    if removed.numel() == 0:
        return out
    w = weight.detach().to(torch.float64)
    hinv = hinv.to(device=weight.device, dtype=torch.float64)
    updated = w - w[:, removed] @ _columns_solve(hinv, removed)
    keep = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    keep[removed] = False
    out[:, keep] = updated[:, keep].to(out.dtype)
    return out


def remove_columns(weight: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One OBS step: the updated float64 weight (``cols`` zero) and the inverse restricted to the rest (``cols`` zero).

    ``hinv`` must be the inverse over the columns not yet removed, zero elsewhere (as returned here).
    """
    coef = _columns_solve(hinv, cols)
    weight = weight - weight[:, cols] @ coef
    hinv = hinv - hinv[:, cols] @ coef
    hinv = (hinv + hinv.T) / 2  # the downdate keeps it symmetric only up to rounding
    weight[:, cols] = 0
    hinv[cols] = 0
    hinv[:, cols] = 0
    return weight, hinv


def group_errors(weight: torch.Tensor, hinv: torch.Tensor, unit_columns: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Each unit's grouped OBS error ``tr(W_G (Hinv[G, G])^-1 W_G^T)``; ``inf`` for units already removed.

    Args:
        weight: ``[out, n]`` float64.
        hinv: ``[n, n]`` float64 inverse over the remaining columns.
        unit_columns: ``[units, per_unit]`` the columns each unit owns.
        alive: bool ``[units]``, the units not yet removed.
    """
    units, per_unit = unit_columns.shape
    errors = torch.full((units,), float("inf"), dtype=torch.float64, device=weight.device)
    live = torch.nonzero(alive).flatten()
    if live.numel() == 0:
        return errors
    cols = unit_columns[live]
    if per_unit == 1:
        c = cols.flatten()
        errors[live] = weight[:, c].square().sum(0) / hinv.diagonal()[c]
        return errors
    blocks = hinv[cols[:, :, None], cols[:, None, :]]  # [live, g, g]
    factor = torch.linalg.cholesky(blocks)
    w = weight[:, cols].permute(1, 2, 0)  # [live, g, out]
    scaled = torch.linalg.solve_triangular(factor, w, upper=False)  # L^-1 W_G^T: its squared norm is the error
    errors[live] = scaled.square().sum(dim=(1, 2))
    return errors


@dataclass
class GreedyRemoval:
    """What :func:`greedy_removal` found.

    Attributes:
        order: the removed units, in the order they were removed (int64).
        errors: per unit, its grouped error when it was removed, or, for a kept unit, its error after
            the last removal (what the next step would have compared).
        weight: the float64 weight after the step-by-step updates (removed columns zero): equal, up to
            rounding, to :func:`compensate` with every removed column at once.
    """

    order: torch.Tensor
    errors: torch.Tensor
    weight: torch.Tensor


def greedy_removal(
    weight: torch.Tensor, hinv: torch.Tensor, unit_columns: torch.Tensor, steps: list[int], selection_weight: torch.Tensor | None = None
) -> GreedyRemoval:
    """SlimGPT's batched greedy pruning of one projection's units.

    Args:
        weight: ``[out, n]``.
        hinv: ``[n, n]`` damped inverse Hessian (:func:`damped_inverse`).
        unit_columns: ``[units, per_unit]`` the columns each unit owns.
        steps: how many units each step removes (their sum is the number removed).
        selection_weight: the weight the errors are computed from, if not ``weight`` (SlimGPT zeroes the
            columns of dead inputs, which cost nothing to remove).
    """
    units = unit_columns.shape[0]
    if sum(steps) > units or any(s < 1 for s in steps):
        raise ValueError(f"steps {steps} must be positive and remove at most the {units} units")
    device = weight.device
    unit_columns = unit_columns.to(device)
    w = (weight if selection_weight is None else selection_weight).detach().to(torch.float64).clone()
    h = hinv.to(device=device, dtype=torch.float64).clone()
    alive = torch.ones(units, dtype=torch.bool, device=device)
    errors = torch.zeros(units, dtype=torch.float64, device=device)
    order: list[torch.Tensor] = []
    for size in steps:
        err = group_errors(w, h, unit_columns, alive)
        pick = torch.sort(err, stable=True).indices[:size]
        errors[pick] = err[pick]
        alive[pick] = False
        order.append(pick)
        w, h = remove_columns(w, h, unit_columns[pick].flatten())
    if bool(alive.any()):
        errors[alive] = group_errors(w, h, unit_columns, alive)[alive]
    removed = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=device)
    return GreedyRemoval(order=removed, errors=errors, weight=w)


def dynamic_group_sizes(count: int, smallest: int = 64, largest: int = 1024) -> list[int]:
    """SlimGPT's Dynamic Group Size for FFN channels: how many each step removes, large steps first.

    The official code's rule: the first group is ``(count - 512) // 2``, each later one ``(previous -
    512) // 2``, each clipped to ``[smallest, largest]`` and to what is left to remove.
    """
    if count < 0 or smallest < 1 or largest < smallest:
        raise ValueError(f"need count >= 0 and 1 <= smallest <= largest, got {count}, {smallest}, {largest}")
    sizes: list[int] = []
    block = (count - _SHRINK) // 2
    left = count
    while left > 0:
        size = min(left, max(block, smallest), largest)
        sizes.append(size)
        left -= size
        block = (block - _SHRINK) // 2
    return sizes
