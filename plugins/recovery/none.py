"""``none``: no recovery; the folded model as it is (the baseline every recovered row is read against)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.recovery import Recovery, RecoveryContext


class NoRecovery(Recovery):
    """Leaves the model unchanged and trains on no token."""

    name = "none"
    summary = "no recovery: the folded model as it is"
    trains = False

    def recover(self, model: nn.Module, context: RecoveryContext) -> nn.Module:
        """Return ``model`` unchanged."""
        return model


@hookimpl
def pruneframe_register_recoveries(register: Callable[[type[Recovery]], None]) -> None:
    """Register ``none``."""
    register(NoRecovery)
