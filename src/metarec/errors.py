"""The user-facing error type, in a module of its own so that the CLI can catch it (and
Ctrl-C) before numpy, pandas or torch are imported: an interrupt during those imports
would otherwise end in a Python traceback."""


class MetarecError(ValueError):
    """A user-facing error: bad input, unknown id, impossible request.

    The CLI prints ``str(err)`` as one line and exits with status 2; nothing is written.
    """


# an error or warning line is cut in the middle past this many characters
MAX_LINE = 2000


def one_line(text: str) -> str:
    """``text`` as one bounded line (the CLI's errors and warnings, the server's error
    details): a path or value with a newline in it split the one-line error in two, and a
    1 MB column name made a 1 MB error line (the server echoed a 500 KB one)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > MAX_LINE:
        half = MAX_LINE // 2 - 30  # room for the marker: the line stays within MAX_LINE
        text = f"{text[:half]} ... [{len(text) - 2 * half} characters] ... {text[-half:]}"
    return text


def first_line(err: BaseException, most: int | None = 200) -> str:
    """The first line of ``err``'s message (at most ``most`` characters; None: all of
    it), for a one-line error that wraps it: a library's message may run to many lines.
    "" where the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0][:most] if lines else ""


def exact_g(value: float) -> str:
    """``value`` for an error message: its :g text when that reads back as the same
    number, else its repr (a 5.000001 on a 1..5 scale read "rating 5 is outside [1, 5]")."""
    import struct

    number = float(value)
    text = f"{number:g}"
    if float(text) == number:
        return text

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    # ratings are held in float32: a 5.000001 arrives as 5.000000953674316; print the
    # shortest text that reads back as the same float32
    if abs(number) < 3.4e38 and f32(number) == number:
        for digits in range(1, 10):
            text = f"{number:.{digits}g}"
            if f32(float(text)) == number:
                return text
    return repr(number)


def user_path(text: object):
    """``text`` (a path a user typed: a flag, a config value, an environment variable)
    as a ``Path`` with ``~`` and ``~user`` expanded as a shell would. A user with no home
    ("~nosuchuser/data") is a one-line :class:`MetarecError`: ``Path.expanduser`` raised
    a bare RuntimeError, a traceback from every command that read such a path."""
    from pathlib import Path

    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise MetarecError(
            f"{text}: cannot expand '~': no such user, or no home directory"
        ) from None
