"""The errors a run reports to the user: the CLI prints their message alone."""


class GenkitError(Exception):
    """Bad input from the user: the message names the cause and what to do about it."""


class TrainingStopped(Exception):
    """A signal stopped training after a checkpoint was saved; `signal_number` says which."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
