class UserError(ValueError):
    """A problem with what the user gave us (a path, a file, an option). The CLI prints it as one line
    `error: ...` and exits with code 2; library callers can catch it like any ValueError."""
    exit_code = 2


class RunFailed(UserError):
    """A run that stopped or ended without what it is for (a non-finite loss, no iteration trained): one
    line, exit code 1."""
    exit_code = 1


class Interrupted(UserError):
    """SIGINT / SIGTERM: the run stopped between two writes; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def warn(message: str) -> None:
    """A one-line `warning: ...` on stderr (rank 0 only under torchrun)."""
    import os
    import sys
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)
