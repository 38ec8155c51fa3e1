"""Errors shown to the user as one line (no traceback unless ``--debug``)."""


class LLMCLIError(Exception):
    """A problem with the user's input (a file, a directory, an option value).

    The CLI prints ``str(error)`` on one line to stderr and exits with :attr:`exit_code`.
    """

    exit_code = 1


class UsageError(LLMCLIError):
    """A bad option value or combination of options (exit code 2, like Click)."""

    exit_code = 2
