"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input: a flag, a data directory, a file, a model_dir. The message says what to do."""


class DataError(UserError):
    """The data cannot be read or does not fit the requested experiment."""


class TrainingError(UserError):
    """Training stopped for a reason the user must act on (for example a NaN loss)."""
