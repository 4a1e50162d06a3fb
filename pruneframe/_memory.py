"""Former name of :mod:`pruneframe.memory` (kept so older imports keep working)."""

from pruneframe.memory import *  # noqa: F401,F403
from pruneframe.memory import __all__  # noqa: F401
