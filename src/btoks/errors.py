"""The user-error base class: what ``btoks`` commands print as one line and exit with code 2.

Raise a subclass (or a ``ValueError`` / ``FileNotFoundError``) for problems the user can fix — bad input, a bad
configuration, a folder in the wrong state — and let programming errors surface as tracebacks.
"""

from __future__ import annotations


class BToksError(Exception):
    """A problem with the user's input, configuration or files (not a bug); its message says what to do."""


USER_ERRORS: tuple[type[BaseException], ...] = (BToksError, ValueError, KeyError, FileNotFoundError,
                                                NotADirectoryError, IsADirectoryError, PermissionError)
"""Exceptions every command turns into ``btoks CMD: error: <message>`` and exit code 2."""
