"""The one base exception for every problem a user can cause."""


class HabaError(Exception):
    """An error caused by input (a file, a flag, a data set), not by a bug.

    The CLI prints ``str(error)`` as one line on stderr and exits 1.
    """


def quote(value: object, limit: int = 80) -> str:
    """Quote untrusted text for a message: ``repr`` escapes control characters (no
    terminal escape injection from a hostile file or flag) and long values are cut, so
    that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
