"""The base class of every error a user can cause and fix.

Each package raises its own subclass (a bad recipe, an unreadable audio file, a wrong
checkpoint folder, ...). Entry points catch :class:`UserError` once and print its message as
one line, without a traceback; anything else is a programming error and is allowed to raise.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (missing file, bad option, wrong checkpoint); the message is one line
    that names the thing and the fix."""


class UsageError(UserError):
    """A problem with a command line or the trees it names that the user must fix; one line."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its class name when the message is empty)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
