class UserError(ValueError):
    """A problem with what the user gave us (a path, a file, an option). The CLI prints it as one line
    `error: ...` and exits with code 2; library callers can catch it like any ValueError."""


def warn(message: str) -> None:
    """A one-line `warning: ...` on stderr (rank 0 only under torchrun)."""
    import os
    import sys
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)
