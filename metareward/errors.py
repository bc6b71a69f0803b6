class UserError(ValueError):
    """A problem with what the user gave us (a path, a file, an option). The CLI prints it as one line
    `error: ...` and exits with code 2; library callers can catch it like any ValueError."""
