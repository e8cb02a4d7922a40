"""The two failures a user sees: bad input (exit 2) and a failed quality gate (exit 1)."""


class DczError(Exception):
    """Bad usage or bad input: reported as one line `deepcompress: error: ...`, exit code 2."""

    exit_code = 2


class GateFailed(DczError):
    """A quality gate (size, accuracy, fidelity) was not met: exit code 1."""

    exit_code = 1
