"""JPT-stream responses (15444-9 A.2-A.3): main header data-bins, then tile data-bins.

The metadata, message plumbing, byte limits, chunks and cache-model records are those of
`jpip.respond.ResponseBuilder`; only the image data differs. After the metadata the image
needs, each codestream's main header data-bin (class 6), then the tiles' data-bins (class 4,
or 5 with Aux for `jpt-stream;ttype=ext`) tile-part by tile-part: the first tile-part of every
tile the window needs, then the second of those that need one, and so on, so that a response
cut by `len` gives the whole window at the resolution or quality its first tile-parts carry.
A tile-part is one message (or what remains of it); the client holds each tile data-bin as a
prefix (cache.model: TILE rows are tile indexes).

Aux of an extended tile message (UNCONFIRMED: the standard's wording was not available; this
follows its meaning for extended precinct messages): the number of quality layers of the tile
every packet of which lies in the bin up to the end of the message.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cache.model import BinKind, CacheModel, ReceivedRows
from codestream.index import CodestreamIndex
from codestream.source import Source
from codestream.tilebins import TileBins, tile_bins, tile_part_pieces

from .jpp import EXT_TILE, MAIN_HEADER, TILE
from .respond import CHUNK_TARGET, Chunk, ResponseBuilder
from .tileplan import TilePlan

__all__ = ["TileResponseBuilder", "layers_done"]


class TileResponseBuilder(ResponseBuilder):
    """One JPT-stream response; `tile_plans` use codestream indexes (see ResponseBuilder)."""

    def __init__(self, source: Source, tile_plans: list[TilePlan], model: CacheModel, *,
                 extended: bool = False, **kw) -> None:
        super().__init__(source, [], model, **kw)
        self.tile_plans = tile_plans
        self.tile_class = EXT_TILE if extended else TILE

    def _image_data(self) -> Iterator[Chunk]:
        src = self.source
        for plan in self.tile_plans:
            if self._stopped:
                return
            cs = plan.codestream
            self._bin(BinKind.MAIN_HEADER, MAIN_HEADER, cs, 0, src.main_header_bin(cs),
                      self.model.stream(cs).main_header or None)
        if self._size >= CHUNK_TARGET:
            chunk = self._flush()
            if chunk:
                yield chunk
        yield from self._tile_data()

    def _tile_data(self) -> Iterator[Chunk]:
        state = []
        for plan in self.tile_plans:
            # One index per response: background indexing may replace the source's index
            # meanwhile, and the tile bins' packet rows are those of the index they came from.
            ix = self.source.codestreams[plan.codestream]
            tb = tile_bins(ix)
            held = self.model.stream(plan.codestream).tiles.get(plan.tiles)
            self.outcome.bytes_skipped += int(np.minimum(held, plan.ends).sum())
            state.append((plan, ix, tb, held.copy()))
        rounds = max((int(p.parts.max()) for p in self.tile_plans if len(p.parts)), default=0)
        for r in range(rounds):
            for plan, ix, tb, held in state:
                if self._stopped:
                    return
                yield from self._round(plan, ix, tb, held, r)

    def _round(self, plan: TilePlan, ix: CodestreamIndex, tb: TileBins, held: np.ndarray,
               r: int) -> Iterator[Chunk]:
        """Messages for tile-part r (counted in each tile) of the tiles that need it."""
        live = np.flatnonzero(plan.parts > r)
        if len(live) == 0:
            return
        q = tb.first[plan.tiles[live]] + r
        a = tb.start[q]
        b = np.minimum(tb.end[q], plan.ends[live])
        frm = np.maximum(held[live], a)
        todo = np.flatnonzero(frm < b)
        cs = plan.codestream
        csn = cs + self.first
        done = layers_done(ix, tb) if self.tile_class == EXT_TILE else None
        sent: list[tuple[int, int]] = []  # (position in plan.tiles, new bin end)
        for j in todo.tolist():
            i, qq = int(live[j]), int(q[j])
            t = int(plan.tiles[i])
            lo, hi, start = int(frm[j]), int(b[j]), int(a[j])
            aux = None
            if done is not None:
                before = int(done[qq - 1]) if qq > tb.first[t] else 0
                aux = (int(done[qq]) if hi == tb.end[qq] else before, before)
            pieces = tile_part_pieces(self.source, cs, tb, qq, lo - start, hi - start, ix)
            n = self._message(self.tile_class, csn, t, lo, pieces, hi - lo,
                              hi == tb.bin_length[t], aux)
            if n:
                sent.append((i, lo + n))
            if self._stopped:
                break
            if self._size >= CHUNK_TARGET:
                self._record_tiles(plan, held, sent)
                sent = []
                chunk = self._flush()
                if chunk:
                    yield chunk
        self._record_tiles(plan, held, sent)

    def _record_tiles(self, plan: TilePlan, held: np.ndarray, sent: list) -> None:
        if not sent:
            return
        where = np.fromiter((i for i, _ in sent), np.int64, len(sent))
        ends = np.fromiter((e for _, e in sent), np.int64, len(sent))
        held[where] = ends
        self._records.append(ReceivedRows(BinKind.TILE, plan.codestream,
                                          plan.tiles[where].astype(np.int32), ends))


def layers_done(ix, tb: TileBins) -> np.ndarray:
    """Per part position: the quality layers of its tile all of whose packets lie in that
    tile-part or an earlier one (the Aux of extended tile messages). Kept on the index."""
    found = getattr(ix, "_tile_layers_done", None)
    if found is not None:
        return found
    pk = ix.packets
    q = tb.packet_part.astype(np.int64)
    ok = q >= 0
    nlayers = max(int(ix.layers.max()) if len(ix.layers) else 0, 1)
    last = np.full((ix.num_tiles, nlayers), -1, np.int64)
    np.maximum.at(last, (tb.tile[q[ok]], pk["layer"][ok].astype(np.int64)), q[ok])
    need = np.maximum.accumulate(last, axis=1)  # the part position layers 0..l need
    done = np.zeros(len(tb.rows), np.int64)
    for t in range(ix.num_tiles):
        span = tb.parts_of(t)
        if not len(span):
            continue
        row = need[t, :int(ix.layers[t])]
        positions = np.arange(span.start, span.stop)
        done[span.start:span.stop] = np.searchsorted(row, positions, side="right")
    ix._tile_layers_done = done
    return done
