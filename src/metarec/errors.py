"""The user-facing error type, in a module of its own so that the CLI can catch it (and
Ctrl-C) before numpy, pandas or torch are imported: an interrupt during those imports
would otherwise end in a Python traceback."""


class MetarecError(ValueError):
    """A user-facing error: bad input, unknown id, impossible request.

    The CLI prints ``str(err)`` as one line and exits with status 2; nothing is written.
    """
