"""User-facing errors.

`InputError` is bad input from the user (a matrix, a config, a path). The CLI
prints its message on one line and exits with status 2; nothing else in
selfplay should turn one into a traceback.

`RunError` is a run that failed while running (a learner died, a judge kept
failing past its retries). The CLI prints its one-line message and exits with
status 1; the run's last checkpoint is intact and `--resume` continues it.
"""


class InputError(ValueError):
    """Bad user input; the message is a complete one-line explanation."""


class RunError(RuntimeError):
    """A run failed at run time; the message is one line and says how to go on."""
