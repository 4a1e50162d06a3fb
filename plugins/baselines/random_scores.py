"""Random pruning: seeded uniform scores, the floor every method must beat (LLM-Pruner's
"Random" row, Ma et al. 2023). Same seed, same model shape: same scores, on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, ScoringContext
from pruneframe_baselines import AllocationConfig

__all__ = ["RandomConfig", "RandomScores"]


class RandomConfig(AllocationConfig):
    """Random-baseline settings.

    Attributes:
        seed: (inherited) seed of the CPU generator that draws the scores.
        allocation: ``global`` or ``uniform`` (the projector's ``scope``).
    """

    allocation: Literal["global", "uniform"] = "global"


class RandomScores(PruningMethod):
    """Scores drawn uniformly from [0, 1) with a dedicated seeded generator (global RNG untouched)."""

    name = "random"
    Config = RandomConfig
    summary = "seeded uniform random scores (the floor every method must beat)"
    config: RandomConfig

    def score(self, context: ScoringContext) -> torch.Tensor:
        """``len(units)`` uniform draws from a generator seeded with ``config.seed``."""
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        return torch.rand(len(context.units), generator=generator, dtype=torch.float32)


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register the random baseline."""
    register(RandomScores)
