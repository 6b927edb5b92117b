"""User-facing errors.

Anything raised as :class:`HyperpruneError` is a problem with the user's input or
environment. The CLI prints its message as one line and exits non-zero; the
message must say what is wrong and what to do about it.
"""


class HyperpruneError(Exception):
    """A one-line, actionable error caused by user input or the environment."""
