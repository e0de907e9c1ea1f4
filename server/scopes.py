"""Which targets a token allows: its `jpip_targets` patterns, matched against target names.

A pattern names files under the image root, '/'-separated, relative to the root (a leading
'/' means the root too). Names and patterns are normalised alike: empty and '.' segments are
dropped (`a//./b` is `a/b`); a name with a '..' segment is never allowed. Matching is
case-sensitive and segment by segment:

- `*` matches any run of characters within one segment (never a '/'), `?` one character, and
  `[abc]`, `[a-z]`, `[!abc]` one character of (not of) a set, as in fnmatch;
- a segment that is exactly `**` matches any number of whole segments: none or more in the
  middle or at the start (`a/**/b.jp2`: `a/b.jp2`, `a/x/y/b.jp2`; `**/*.dcm`: every `.dcm`
  file), one or more at the end (`a/**`: everything below the folder `a`). `**` inside a
  segment is two `*`;
- everything else matches itself.

So `**` allows every file, `*` only the files directly in the root, `studies/123/*.dcm` the
`.dcm` files of that one folder. A folder is shown in a listing when some allowed file could lie
below it. Nothing here touches the file system.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["MAX_PATTERNS", "MAX_PATTERN_LENGTH", "PatternError", "TargetScope", "name_parts"]

MAX_PATTERNS = 1024
MAX_PATTERN_LENGTH = 1024
_ANY_SEGMENTS = None  # a `**` segment in a compiled pattern
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PatternError(ValueError):
    """A `jpip_targets` value that is not a list of patterns; the message says why (it never
    quotes the pattern: tokens are not echoed)."""


def name_parts(name: str) -> tuple[str, ...] | None:
    """The segments of a target or folder name, normalised; None when it climbs out ('..')
    or holds what no target name holds (a backslash, control characters)."""
    if "\\" in name or _CONTROL.search(name):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    return None if ".." in parts else parts


def _segment_regex(segment: str) -> re.Pattern[str]:
    """One segment of a pattern as a regular expression (fnmatch's rules, within a segment)."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        i += 1
        if c == "*":
            out.append(".*")
            while i < n and segment[i] == "*":
                i += 1
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and segment[j] == "!":
                j += 1
            if j < n and segment[j] == "]":
                j += 1
            while j < n and segment[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # no closing ']': a literal '['
                continue
            body = segment[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if "--" in body:
                raise re.error("'--' in a set")  # fnmatch and `re` read it differently
            # (No backslash reaches here: name_parts refuses it.) Escaped: what `re` reads
            # differently inside a set than fnmatch does.
            for special in "&~|[":  # (doubled, they would be set operations to a future `re`)
                body = body.replace(special, "\\" + special)
            if body.startswith("^"):
                body = "\\" + body
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    # A segment holds no '/', so '.' and negated sets need no guard against one.
    return re.compile("".join(out), re.DOTALL)


def _compile(pattern: object) -> tuple[re.Pattern[str] | None, ...]:
    if not isinstance(pattern, str):
        raise PatternError("jpip_targets holds something other than a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"a jpip_targets pattern is longer than {MAX_PATTERN_LENGTH} "
                           "characters")
    parts = name_parts(pattern)
    if parts is None:
        raise PatternError("a jpip_targets pattern holds '..', a backslash or control "
                           "characters")
    if not parts:
        raise PatternError("a jpip_targets pattern is empty")
    compiled: list[re.Pattern[str] | None] = []
    for part in parts:
        if part == "**":
            if compiled and compiled[-1] is _ANY_SEGMENTS:
                continue  # `**/**` is `**`
            compiled.append(_ANY_SEGMENTS)
        else:
            try:
                compiled.append(_segment_regex(part))
            except re.error:  # e.g. a reversed range [z-a]
                raise PatternError("a jpip_targets pattern has a malformed [...] set") from None
    return tuple(compiled)


def _matches(pat: Sequence[re.Pattern[str] | None], parts: Sequence[str]) -> bool:
    """True if the pattern matches the whole name. Memoised on positions, so a pattern of
    many `**` costs at most (pattern segments) x (name segments) steps."""
    memo: dict[tuple[int, int], bool] = {}

    def at(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(pat):
            result = j == len(parts)
        elif pat[i] is _ANY_SEGMENTS:
            least = 1 if i == len(pat) - 1 else 0  # a trailing `**` takes one segment or more
            result = any(at(i + 1, k) for k in range(j + least, len(parts) + 1))
        else:
            result = (j < len(parts) and pat[i].fullmatch(parts[j]) is not None
                      and at(i + 1, j + 1))
        memo[key] = result
        return result

    return at(0, 0)


def _may_contain(pat: Sequence[re.Pattern[str] | None], folder: Sequence[str]) -> bool:
    """True if the pattern matches some name below `folder` (one segment or more deeper)."""
    for i, seg in enumerate(pat):
        if seg is _ANY_SEGMENTS:
            return True  # it takes the rest of the folder, and what lies below
        if i == len(folder):
            return True  # pattern segments are left for what lies below
        if seg.fullmatch(folder[i]) is None:
            return False
    return False  # the pattern ends at or above the folder: it names no file below it


class TargetScope:
    """The targets one token allows (see the module docstring for the rules)."""

    __slots__ = ("patterns", "_compiled", "_everything")

    def __init__(self, patterns: Iterable[object]) -> None:
        if isinstance(patterns, str | bytes) or not isinstance(patterns, Iterable):
            raise PatternError("jpip_targets is not a list of patterns")
        items = list(patterns)
        if len(items) > MAX_PATTERNS:
            raise PatternError(f"jpip_targets holds more than {MAX_PATTERNS} patterns")
        self._compiled = tuple(_compile(p) for p in items)
        self.patterns: tuple[str, ...] = tuple(items)  # type: ignore[arg-type]
        self._everything = any(c == (_ANY_SEGMENTS,) for c in self._compiled)

    def allows(self, name: str) -> bool:
        """True if the file `name` (a target's name under the root) is allowed."""
        parts = name_parts(name)
        if not parts:
            return False
        if self._everything:
            return True
        return any(_matches(c, parts) for c in self._compiled)

    def may_contain(self, folder: str) -> bool:
        """True if some allowed file could lie below `folder` (a folder's name; '' is the
        root)."""
        parts = name_parts(folder)
        if parts is None:
            return False
        return any(_may_contain(c, parts) for c in self._compiled)

    def __repr__(self) -> str:
        return f"TargetScope({list(self.patterns)!r})"
