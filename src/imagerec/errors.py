"""The one exception type a user can cause."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: one line saying what is wrong and what to do.

    The CLI prints the message and exits with code 2; programming errors stay ordinary exceptions.
    """
