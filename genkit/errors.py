"""The one error type a user can cause; the CLI prints its message alone."""


class GenkitError(Exception):
    """Bad input from the user: the message names the cause and what to do about it."""
