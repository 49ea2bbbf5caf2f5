"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input: a flag, a data directory, a file, a model_dir. The message says what to do."""


class DataError(UserError):
    """The data cannot be read or does not fit the requested experiment."""


class TrainingError(UserError):
    """Training stopped for a reason the user must act on (for example a NaN loss)."""


class EvaluationDataError(Exception):
    """An image of an evaluation split failed to read or decode during training's evaluation pass.

    Carries the underlying TensorFlow error (`error`) from the callback that evaluates, so that the
    run can say which pass stopped (`epoch`: 1-based) and name the file.
    """

    def __init__(self, split: str, epoch: int, error: Exception):
        super().__init__(f"{split} split, after epoch {epoch}: {error}")
        self.split, self.epoch, self.error = split, epoch, error
