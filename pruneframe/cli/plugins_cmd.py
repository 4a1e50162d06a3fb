"""``pruneframe plugins``: every loaded plugin, its hooks and registrations, and every plugin that failed."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pruneframe.cli.common import Command
from pruneframe.pipeline.host import PluginHost, PluginInfo

__all__ = ["COMMAND", "table"]

_HEADERS = ("plugin", "module", "hooks", "methods", "recalibrations", "evaluators", "recoveries")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` for machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def table(infos: list[PluginInfo]) -> str:
    """The loaded plugins as an aligned text table, then the failed ones with their reasons."""
    loaded = [i for i in infos if i.error is None]
    cells = [
        [
            i.name,
            i.module,
            ", ".join(i.hooks) or "-",
            ", ".join(sorted(i.methods)) or "-",
            ", ".join(sorted(i.recalibrations)) or "-",
            ", ".join(sorted(i.evaluators)) or "-",
            ", ".join(sorted(i.recoveries)) or "-",
        ]
        for i in loaded
    ]
    widths = [max(len(row[c]) for row in [list(_HEADERS), *cells]) for c in range(len(_HEADERS))]
    lines = ["  ".join(text.upper().ljust(w) for text, w in zip(_HEADERS, widths)).rstrip()]
    lines += ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in cells]
    failed = [i for i in infos if i.error is not None]
    if failed:
        lines += ["", f"failed to load ({len(failed)}):"]
        lines += [f"  {i.name}: {i.error}" for i in failed]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    infos = PluginHost.create().describe()
    print(json.dumps([asdict(i) for i in infos], indent=2) if args.json else table(infos))
    return 0


COMMAND = Command("plugins", "list loaded plugins, their hooks, methods, recalibrations, evaluators and recoveries, and failed plugins", add_arguments, run)
