"""The one error type the codestream package raises for bad or unsupported files."""
from __future__ import annotations


class CodestreamError(Exception):
    """A file that cannot be indexed: names the byte offset and the reason.

    `offset` is an absolute offset in the file (or -1 when not tied to one place).
    `unsupported` is True when the file is valid but uses a feature we do not serve;
    `not_jpeg2000` when the file is not JPEG 2000 at all (no codestream or JP2 signature at its
    start); otherwise the file is a damaged or malformed JPEG 2000 file.
    """

    def __init__(self, offset: int, reason: str, *, unsupported: bool = False,
                 not_jpeg2000: bool = False) -> None:
        super().__init__(f"at byte {offset}: {reason}" if offset >= 0 else reason)
        self.offset = offset
        self.reason = reason
        self.unsupported = unsupported
        self.not_jpeg2000 = not_jpeg2000

    def __reduce__(self):  # pickled whole: indexing errors come back from a child process
        return (_rebuild, (self.offset, self.reason, self.unsupported, self.not_jpeg2000))


def _rebuild(offset: int, reason: str, unsupported: bool, not_jpeg2000: bool) -> CodestreamError:
    return CodestreamError(offset, reason, unsupported=unsupported, not_jpeg2000=not_jpeg2000)


class FileChanged(CodestreamError):
    """The file changed (cut shorter, replaced, rewritten in place) while it was being read.

    Not damage: asking again reads the file as it is now, so the server answers 503 with
    Retry-After (server/errors.py reads `status`, `reason` and `retry_after`)."""

    status = 503
    retry_after = 1

    def __init__(self, reason: str) -> None:
        super().__init__(-1, reason)

    def __reduce__(self):
        return (FileChanged, (self.reason,))
