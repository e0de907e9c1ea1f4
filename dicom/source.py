"""A DICOM file served in place: each frame of its encapsulated Pixel Data is one codestream.

Frames are indexed lazily, one at a time, the first time they are needed (the server indexes
the frames a request names in a worker thread before it plans; the index cache completes the
rest in the background and then persists the whole object). Frame N is JPIP codestream N
(`first_codestream` = 1, PS3.5 8.4.1): `codestreams[N - 1]` is its index.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from codestream.boxes import FileLayout
from codestream.errors import CodestreamError, FileChanged
from codestream.index import CodestreamIndex
from codestream.metabins import MetadataBins
from codestream.scattered import index_runs
from codestream.source import (
    FileIdentity,
    Source,
    check_same_file,
    file_identity,
    in_same_file,
    map_file,
    stat_key,
)

from .errors import BAD_FILE, UNSUPPORTED, DicomError
from .frames import FrameTable, frame_table, locate_codestream
from .part10 import read_header

log = logging.getLogger(__name__)

DICOM_LAYOUT = FileLayout(False, (), ())  # no JP2 boxes: metadata-bin 0 is empty


class FrameIndexes(Sequence):
    """`DicomSource.codestreams`: the frames' indexes, each built when first read."""

    def __init__(self, source: DicomSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return self._source.frames.number_of_frames

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame position {i} of {n}")
        return self._source.frame_index(i)

    def __iter__(self) -> Iterator[CodestreamIndex]:
        return (self[i] for i in range(len(self)))


class DicomSource(Source):
    """An open DICOM file whose frames are JPEG 2000 / HTJ2K codestreams."""

    first_codestream = 1

    def __init__(self, path: Path, identity: FileIdentity, transfer_syntax: str,
                 frames: FrameTable, *,
                 stored: Callable[[int], CodestreamIndex | None] | None = None,
                 failures: dict[int, DicomError] | None = None, use_plt: bool = True) -> None:
        self._lock = threading.Lock()  # one frame indexed at a time per file
        super().__init__(path, identity, DICOM_LAYOUT, [], MetadataBins.empty())
        self.first_codestream = 1  # also as an instance attribute, whatever the base sets
        self.transfer_syntax = transfer_syntax
        self.frames = frames
        self.use_plt = use_plt
        # Indexes built (or read from `stored`, the index cache's copy of a complete object).
        self._indexes: list[CodestreamIndex | None] = [None] * frames.number_of_frames
        self._stored = stored
        self._failures: dict[int, DicomError] = dict(failures or {})
        self.codestreams = FrameIndexes(self)  # type: ignore[assignment]

    def _release(self) -> None:
        # Not while a frame is being indexed from the map (it takes at most one frame's time).
        with self._lock:
            super()._release()

    # --- lazily indexed frames -----------------------------------------------------------
    def frame_index(self, i: int) -> CodestreamIndex:
        """The index of frame i + 1, built now if it is not yet (blocking)."""
        ix = self._indexes[i]
        if ix is not None:
            return ix
        failure = self._failures.get(i)
        if failure is not None:
            raise DicomError(failure.reason, failure.status)
        if self._stored is not None:
            ix = self._stored(i)
            if ix is not None:
                self._indexes[i] = ix
                return ix
        with self._lock:
            ix = self._indexes[i]
            if ix is None:
                ix = self._build(i)
        return ix

    def _build(self, i: int) -> CodestreamIndex:
        if self.view is None:
            raise DicomError("the file was closed while it was being indexed", 503)
        runs = self.frames.frame_runs(i)
        try:
            if self.index_in is not None:
                ix = self.index_in(index_file_frame, str(self.path), stat_key(self.identity),
                                   runs, self.use_plt)
            else:
                ix = _index_frame(self._mapped(), runs, self.use_plt)
        except FileChanged:
            raise  # not the frame's fault: asking again reads the file as it is now
        except (DicomError, CodestreamError) as e:
            status = UNSUPPORTED if getattr(e, "unsupported", False) else BAD_FILE
            err = DicomError(f"frame {i + 1}: {e}", status)
            self._failures[i] = err
            log.warning("%s: cannot index %s", self.path, err.reason)
            raise DicomError(err.reason, err.status) from None
        self._indexes[i] = ix
        return ix

    def unindexed(self, positions: list[int] | None = None) -> list[int]:
        if self._stored is not None:
            return []  # every frame is in the stored copy (or failed)
        pick = range(len(self._indexes)) if positions is None else positions
        return [i for i in pick if self._indexes[i] is None and i not in self._failures]

    def index_codestreams(self, positions: list[int], resolutions: int | None = None, *,
                          background: bool = False) -> None:
        """Indexes these frames now (each whole: `resolutions` does not apply to frames); a
        frame that fails keeps its error for when it is read."""
        for i in positions:
            try:
                self.frame_index(i)
            except DicomError:
                pass

    def index_steps(self, position: int) -> list[int | None]:
        return [None] if self.unindexed([position]) else []

    @property
    def complete(self) -> bool:
        return not self.unindexed()

    @property
    def indexed_count(self) -> int:
        return sum(ix is not None for ix in self._indexes)

    def persisted_state(self) -> tuple[list[CodestreamIndex | None], dict[int, DicomError]]:
        """The frames' indexes (None where a frame failed) and failures, for the disk cache."""
        indexes = [None if i in self._failures else self.frame_index(i)
                   for i in range(len(self._indexes))]
        return indexes, dict(self._failures)


def open_dicom(path: Path | str, *, use_plt: bool = True) -> DicomSource:
    """Opens a DICOM file for serving: reads its header and item table (no frame is indexed
    yet). DicomError when it is not served (415) or is corrupt (422)."""
    path = Path(path)
    return DicomSource(path, *read_dicom(path), use_plt=use_plt)


def read_dicom(path: Path) -> tuple[FileIdentity, str, FrameTable]:
    """What a DicomSource of `path` is made of: identity, transfer syntax, frame table
    (picklable: the server reads it in a child process, cache.isolation)."""
    identity = file_identity(path)
    header = read_header(path)
    with open(path, "rb") as f:
        check_same_file(f, stat_key(identity), "opened")
        with map_file(f) as mm:
            table = frame_table(mm, header.items_offset, header.number_of_frames,
                                extended_offsets=header.extended_offsets,
                                extended_lengths=header.extended_lengths)
    return identity, header.transfer_syntax, table


def index_file_frame(path: str, key: tuple[int, int, int], runs, use_plt: bool
                     ) -> CodestreamIndex:
    """Indexes one frame (its fragment `runs`) of the file at `path`, which must still be
    the file of stat `key`: `DicomSource._build` in a child process."""
    return in_same_file(path, key, lambda mm: _index_frame(mm, runs, use_plt))


def _index_frame(buf, runs, use_plt: bool) -> CodestreamIndex:
    start, length = locate_codestream(buf, runs)
    return index_runs(buf, runs, start, length, use_plt=use_plt)
