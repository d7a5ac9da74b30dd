"""User-facing errors.

`InputError` is bad input from the user (a matrix, a config, a path). The CLI
prints its message on one line and exits with status 2; nothing else in
selfplay should turn one into a traceback.
"""


class InputError(ValueError):
    """Bad user input; the message is a complete one-line explanation."""
