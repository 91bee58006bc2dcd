"""Errors that end a command with one clear line and a meaningful exit code.

Exit codes: 0 success (also a rerun that finds its work already finished); 1 internal error (a
bug: please report it); 2 bad input, or not available; 3 the loss stopped being finite; 4 a write
failed mid-run; 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint.
"""


class DistillError(Exception):
    """Bad input or an unmet requirement: printed as one line, exit code 2."""

    exit_code = 2
    prefix = "error"


class AlreadyFinished(DistillError):
    """A rerun of a finished command on the same folder, options and inputs: nothing to do.

    The message is the folder (empty on processes other than the main one: nothing printed).
    """

    exit_code = 0
    prefix = "already finished"


class NonFiniteLoss(DistillError):
    """The loss was NaN or infinite more often than the recipe allows."""

    exit_code = 3


class WriteFailed(DistillError):
    """Writing a checkpoint or the model failed mid-run (disk full, permissions)."""

    exit_code = 4


class Interrupted(DistillError):
    """SIGINT or SIGTERM: a checkpoint was saved; exit 128 + the signal number."""

    prefix = "stopped"

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class UnsupportedModel(DistillError):
    """A model a step cannot handle: one line naming the model type, the step and why."""

    def __init__(self, model_type: str, step: str, why: str):
        super().__init__(f"{step} does not support model type '{model_type}': {why}")
