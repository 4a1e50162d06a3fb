"""Input phases: the stretches of a run that read user input, where its errors are reported as bad input.

Every failure caused by input (unknown names, bad settings, unreachable data, a missing tokenizer) is
raised as :class:`~pruneframe.settings.errors.InputError`, so the command line can report it in one
line before anything slow starts. Only the error types in :data:`INPUT_ERRORS` count as input errors:
any other exception (an internal ``KeyError`` or ``OSError`` included) is a bug and propagates with its
traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from pruneframe.pipeline.plugin_errors import UnknownNameError, UnsupportedModelError
from pruneframe.settings.errors import InputError, explain

__all__ = ["INPUT_ERRORS", "PATH_ERRNOS", "input_phase"]

#: The exceptions an input phase reports as bad input. ``ValueError``: a bad value; pruneframe's own input
#: errors are all ValueErrors (``InputError``, ``BudgetError``, ``DataSourceError``, ``DeviceUnavailableError``,
#: ``InsufficientCalibrationError``, ``CheckpointError``, ``StaleCheckpointError``), as is pydantic's
#: ``ValidationError``. ``UnknownNameError``: a method or evaluator name no plugin registered (the one
#: ``KeyError`` that is input). ``UnsupportedModelError``: a model no adapter handles (the one
#: ``NotImplementedError`` that is input). ``FileNotFoundError``, ``NotADirectoryError`` and
#: ``IsADirectoryError``: a named path that is missing or of the wrong kind (the ``OSError``\ s that are input,
#: with those of :data:`PATH_ERRNOS`).
INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnknownNameError,
    UnsupportedModelError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
)


#: The ``errno`` values of an ``OSError`` that only a named path causes: a name too long, a symbolic link loop.
PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP})


@contextmanager
def input_phase(what: str) -> Iterator[None]:
    """Re-raise the :data:`INPUT_ERRORS` (and the path errors of :data:`PATH_ERRNOS`) raised inside as ``InputError`` naming ``what``.

    Anything else propagates unchanged.
    """
    try:
        yield
    except InputError:
        raise
    except INPUT_ERRORS as exc:
        raise InputError(f"{what}: {explain(exc)}") from exc
    except OSError as exc:
        if exc.errno not in PATH_ERRNOS:
            raise
        named = f"{exc.filename!r}: " if exc.filename is not None else ""
        raise InputError(f"{what}: {named}{exc.strerror}") from exc
