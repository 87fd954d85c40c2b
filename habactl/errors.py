"""The one base exception for every problem a user can cause."""


class HabaError(Exception):
    """An error caused by input (a file, a flag, a data set), not by a bug.

    The CLI prints ``str(error)`` as one line on stderr and exits 1.
    """
