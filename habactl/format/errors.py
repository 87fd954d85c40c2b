"""The one exception for every problem with a .haba file."""

from __future__ import annotations

from habactl.errors import HabaError, quote


class ArchiveError(HabaError):
    """A .haba file (or the content given to the writer) is not a valid archive.

    The message starts with the file name and names the part, e.g.
    ``broken.haba: tensor 'bases': sha256 mismatch (data damaged)``.
    ``file`` and ``detail`` keep the two halves apart for callers that want them.
    """

    def __init__(self, detail: str, file: str | None = None) -> None:
        self.detail = detail
        self.file = file
        super().__init__(f"{file}: {detail}" if file else detail)

    def at(self, file: str) -> ArchiveError:
        """The same problem, attributed to ``file`` (unless it already names one)."""
        if self.file is not None:
            return self
        return ArchiveError(self.detail, file)


__all__ = ["ArchiveError", "quote"]
