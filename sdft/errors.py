"""The user's mistakes, told apart from sdft's own bugs.

A :class:`UserError` is a bad file or a bad config value. Its message is one line that names the file or the config
key and says what to do; the ``sdft`` command prints it without a traceback and exits with status 2 (set
``SDFT_DEBUG=1`` for the traceback). Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad input (file or config value) whose message names it and the fix, in one line."""
