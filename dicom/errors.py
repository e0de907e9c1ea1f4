"""The one error type the dicom package raises: a DICOM file we cannot serve, and why."""
from __future__ import annotations

# HTTP statuses the server answers with (server/errors.py reads `status` and `reason`).
NOT_SERVED = 415      # a valid file whose transfer syntax is not JPEG 2000 / HTJ2K
BAD_FILE = 422        # a corrupt or truncated DICOM file, or a frame that does not parse
UNSUPPORTED = 501     # a valid frame that uses a JPEG 2000 feature we do not serve


class DicomError(Exception):
    """A DICOM file that is not served. Always the file's fault (4xx) or a feature we lack
    (501): never a server defect."""

    def __init__(self, reason: str, status: int = BAD_FILE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __reduce__(self):  # pickled whole: indexing errors come back from a child process
        return (DicomError, (self.reason, self.status))
