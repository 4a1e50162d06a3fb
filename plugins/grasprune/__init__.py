"""GRASPrune: joint FFN-channel and KV-group pruning with projected straight-through gates.

Reference plugin of pruneframe; it uses only the public hook contract. See :mod:`.plugin`.
"""

from pruneframe_grasprune.config import GRASPruneConfig
from pruneframe_grasprune.plugin import GRASPrune

__all__ = ["GRASPrune", "GRASPruneConfig"]
