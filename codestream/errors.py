"""The one error type the codestream package raises for bad or unsupported files."""
from __future__ import annotations


class CodestreamError(Exception):
    """A file that cannot be indexed: names the byte offset and the reason.

    `offset` is an absolute offset in the file (or -1 when not tied to one place).
    `unsupported` is True when the file is valid but uses a feature we do not serve.
    """

    def __init__(self, offset: int, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(f"at byte {offset}: {reason}" if offset >= 0 else reason)
        self.offset = offset
        self.reason = reason
        self.unsupported = unsupported
