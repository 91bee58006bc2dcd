"""Errors that end a command with one clear line and a meaningful exit code."""


class DistillError(Exception):
    """Bad input or an unmet requirement: printed as one line, exit code 2."""

    exit_code = 2
