"""A server without I/O around `jpip.machine`, for table-driven tests (in the manner of h11's).

`Wire` plays the server's part with an in-memory session store and no event loop: it feeds a
request to the machine, records the machine's changes, "writes" chunks one at a time, commits
each, and finishes. Requests can be run whole (`request`) or stepped (`start`, `go`, `step`,
`finish`) to interleave them: pre-emption, qid order, channels closed under a request.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from cache.response_cache import ResponseCache
from cache.sessions import MemorySessionStore, SessionState
from codestream.source import Source
from jpip.errors import RequestError
from jpip.jpp import EndOfResponse, Message, parse_stream
from jpip.machine import Exchange, JPIPMachine, Reply, TurnKind
from jpip.request import parse_query


@dataclass
class Answer:
    """What a client receives: status, headers, the messages and the EOR reason."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    messages: list[Message] = field(default_factory=list)
    eor: int | None = None
    content_type: str = "image/jpp-stream"

    @property
    def bins(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        """(class, CSn, bin id) -> (first offset, bytes) of the messages received."""
        out: dict[tuple[int, int, int], tuple[int, int]] = {}
        for m in self.messages:
            key = (m.bin_class, m.csn, m.bin_id)
            first, size = out.get(key, (m.offset, 0))
            out[key] = (min(first, m.offset), size + len(m.data))
        return out

    def classes(self) -> set[int]:
        return {m.bin_class for m in self.messages}


@dataclass
class Pending:
    """One request on its way through the machine."""

    ex: Exchange
    session: SessionState | None
    reply: Reply | None = None
    chunks: object = None
    pending_chunk: object = None  # built by go() before the headers are final, not yet written
    out: bytearray = field(default_factory=bytearray)
    sent: int = 0
    done: bool = False
    cut: bool = False
    answer: Answer | None = None


class Wire:
    """The server side of the tests: one target, one machine, one session store."""

    def __init__(self, source: Source, target_path: str = "/images/target", *,
                 max_response_bytes: int = 1 << 30, response_cache_bytes: int = 0) -> None:
        counter = itertools.count()
        self.source = source
        self.target_path = target_path
        self.store = MemorySessionStore()
        self.machine = JPIPMachine(jpip_path="/jpip", max_response_bytes=max_response_bytes,
                                   responses=ResponseCache(response_cache_bytes),
                                   new_id=lambda: f"id{next(counter)}")

    # --- stepped ------------------------------------------------------------------------------
    def start(self, query: str) -> Pending:
        """Parses, loads the session, binds and records the arrival (steps 1-2)."""
        ex = self.machine.exchange(parse_query(query))
        session = self.store.load_now(ex.cid) if ex.cid is not None else None
        # Target resolution is the server's: a request names one with target= (or is on a
        # channel, whose session has it).
        named = not ex.close_only and (ex.target is not None or session is not None)
        ex.bind(session, self.source if named else None, self.target_path if named else None)
        if ex.opening is not None:
            session = self.store.open_now(ex.opening)
        elif ex.arrival:
            self.store.apply_now(session, ex.arrival)
        return Pending(ex, session)

    def turn(self, p: Pending, waited_out: bool = False) -> TurnKind:
        """Step 3 once (channel requests): records GO/PREEMPTED changes."""
        session = self.store.load_now(p.ex.cid)
        if session is None:
            raise RequestError("cid", "the channel was closed", 503)
        p.session = session
        turn = p.ex.turn(session, waited_out)
        self.store.apply_now(session, turn.changes)
        if turn.kind is TurnKind.PREEMPTED:
            p.reply = p.ex.preempted_reply(session)
            p.chunks = iter(p.reply.chunks())
        return turn.kind

    def go(self, p: Pending) -> None:
        """Step 4: the reply; its changes are recorded, the first chunk is built."""
        if p.reply is None:
            p.reply = p.ex.reply(p.session)
            if p.reply.changes and p.session is not None:
                self.store.apply_now(p.session, p.reply.changes)
            p.chunks = iter(p.reply.chunks())
        first = next(p.chunks)
        p.pending_chunk = first

    def step(self, p: Pending) -> bool:
        """Writes the next chunk (or cuts the response for a newer request); False at the end."""
        chunk = getattr(p, "pending_chunk", None)
        if chunk is None:
            chunk = next(p.chunks, None)
        p.pending_chunk = None
        if chunk is None:
            p.done = True
            return False
        session = p.session if p.ex.serving else None
        if chunk.records and p.ex.preempted(session):
            p.out += p.ex.window_change()
            p.cut = True
            return False
        p.out += chunk.data
        p.sent += len(chunk.data)
        changes = p.ex.commit(chunk)
        if changes and session is not None:
            self.store.apply_now(session, changes)
        return True

    def finish(self, p: Pending) -> Answer:
        """Step 6: frees the channel; returns what the client received."""
        complete = p.done and not p.cut
        session = p.session if p.ex.serving else None
        changes = p.ex.finish(session, p.sent, complete)
        if session is not None:
            self.store.apply_now(session, changes)
        items = parse_stream(bytes(p.out))
        end = items[-1] if items and isinstance(items[-1], EndOfResponse) else None
        p.answer = Answer(p.reply.status, dict(p.reply.headers), bytes(p.out),
                          [m for m in items if isinstance(m, Message)],
                          end.reason if end is not None else None, p.reply.content_type)
        return p.answer

    # --- whole requests -----------------------------------------------------------------------
    def request(self, query: str) -> Answer:
        """A request from start to end, nothing else happening meanwhile."""
        p = self.start(query)
        if p.ex.queued:
            kind = self.turn(p)
            assert kind in (TurnKind.GO, TurnKind.PREEMPTED), kind
        self.go(p)
        while self.step(p):
            pass
        return self.finish(p)

    def session_of(self, cid: str) -> SessionState | None:
        return self.store.load_now(cid)


def cnew_cid(answer: Answer) -> str:
    return dict(kv.split("=", 1) for kv in answer.headers["JPIP-cnew"].split(","))["cid"]
