"""The ``pruneframe`` command line: ``plugins``, ``prune``, ``recover``, ``eval``, ``compare``, ``export`` and ``report``.

Each subcommand is a :class:`~pruneframe.cli.common.Command` in :data:`COMMANDS`. Bad input (argparse
errors, and :class:`~pruneframe.settings.errors.InputError`: invalid settings, unknown names, unreachable
data, infeasible budgets, unwritable output paths, each raised as such by an input phase, see
:data:`pruneframe.settings.phases.INPUT_ERRORS`) prints one line to stderr and exits with 2; a plugin's
fault (:class:`~pruneframe.pipeline.host.PluginError`) prints one line naming the plugin and exits with 1,
as does an output the disk refused (:class:`~pruneframe.cli.output_paths.OutputError`: full, read-only);
Ctrl-C prints ``interrupted`` and exits with 130, the output left absent or as it was;
``compare --collect`` exits with 3 while runs are still pending (no report yet). Anything else is a bug:
it propagates with its traceback (``python -m pruneframe`` then exits with 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pruneframe.cli import compare_cmd, eval_cmd, export_cmd, plugins_cmd, prune_cmd, recover_cmd, report_cmd
from pruneframe.cli.common import Command, Parser, one_line
from pruneframe.cli.output_paths import OutputError
from pruneframe.settings.errors import InputError
from pruneframe.pipeline.host import PluginError
from pruneframe.toolkit.memory import return_large_blocks

__all__ = ["COMMANDS", "build_parser", "main"]

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    plugins_cmd.COMMAND,
    prune_cmd.COMMAND,
    recover_cmd.COMMAND,
    eval_cmd.COMMAND,
    compare_cmd.COMMAND,
    export_cmd.COMMAND,
    report_cmd.COMMAND,
)

#: Exit code for bad input.
USAGE_ERROR = 2
#: Exit code for a fault of an installed plugin, and for an output the disk refused.
PLUGIN_FAULT = 1
#: Exit code after Ctrl-C (SIGINT), as shells report a process it ended: 128 + 2.
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = Parser(prog="pruneframe", description="Budgeted structured pruning of LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 a plugin's fault, a failed run or job or a refused
    write, 2 bad input, 3 runs still pending after ``compare --collect``, 130 interrupted).

    Any other exception propagates unchanged, with its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad flags (2)
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    if args.command is None:
        names = ", ".join(command.name for command in COMMANDS)
        print(f"pruneframe: error: name a command: {names} (see pruneframe --help)", file=sys.stderr)
        return USAGE_ERROR
    return_large_blocks()  # freed weight-sized temporaries go back to the OS (see its docstring)
    try:
        return args.run(args)
    except InputError as exc:
        _error(args.command, exc)
        return USAGE_ERROR
    except (PluginError, OutputError) as exc:
        _error(args.command, exc)
        return PLUGIN_FAULT
    except KeyboardInterrupt:
        print(f"pruneframe {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _error(command: str, exc: Exception) -> None:
    """The error's message on stderr, in one line after ``pruneframe COMMAND: error:``."""
    print(f"pruneframe {command}: error: {one_line(str(exc))}", file=sys.stderr)
