"""The `jpip_targets` pattern rules (server/scopes.py), as a table of names and folders."""
from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.scopes import MAX_PATTERNS, PatternError, TargetScope, name_parts

# (pattern, name, allowed)
FILES = [
    ("studies/123/*.dcm", "studies/123/ct.dcm", True),
    ("studies/123/*.dcm", "studies/123/ct.j2k", False),
    ("studies/123/*.dcm", "studies/123/sub/ct.dcm", False),  # '*' stays in its segment
    ("studies/123/*.dcm", "studies/1234/ct.dcm", False),
    ("studies/123/*.dcm", "Studies/123/ct.dcm", False),  # case-sensitive
    ("studies/123/*.dcm", "./studies//123/ct.dcm", True),  # names are normalised
    ("/studies/123/*.dcm", "studies/123/ct.dcm", True),  # a leading '/' is the root
    ("studies/123/*.dcm", "studies/123/../456/ct.dcm", False),  # '..' is never allowed
    ("studies/123/*.dcm", "studies/123/ct.dcm/", True),
    ("*", "a.jp2", True),
    ("*", "a/b.jp2", False),
    ("**", "a.jp2", True),
    ("**", "a/b/c.jp2", True),
    ("a/**", "a/b.jp2", True),
    ("a/**", "a/b/c.jp2", True),
    ("a/**", "a", False),  # a trailing '**' takes one segment or more
    ("a/**", "ab/c.jp2", False),
    ("**/*.dcm", "x.dcm", True),  # a leading '**' takes none or more
    ("**/*.dcm", "a/b/x.dcm", True),
    ("**/*.dcm", "a/b/x.j2k", False),
    ("a/**/b.jp2", "a/b.jp2", True),
    ("a/**/b.jp2", "a/x/y/b.jp2", True),
    ("a/**/b.jp2", "a/x/y/c.jp2", False),
    ("a/**/**/b.jp2", "a/b.jp2", True),
    ("a**b.jp2", "axyzb.jp2", True),  # '**' inside a segment is '*'
    ("a**b.jp2", "ax/zb.jp2", False),
    ("img?.jp2", "img1.jp2", True),
    ("img?.jp2", "img12.jp2", False),
    ("img[0-4].jp2", "img3.jp2", True),
    ("img[0-4].jp2", "img7.jp2", False),
    ("img[!0-4].jp2", "img7.jp2", True),
    ("img[!0-4].jp2", "img3.jp2", False),
    ("img[.jp2", "img[.jp2", True),  # an unclosed '[' is itself
    ("a.b(c)+$.jp2", "a.b(c)+$.jp2", True),  # regular-expression characters are themselves
    ("a.b(c)+$.jp2", "aXb(c)+$.jp2", False),
    ("x.jp2", "", False),
]


@pytest.mark.parametrize("pattern, name, allowed", FILES)
def test_files(pattern: str, name: str, allowed: bool) -> None:
    assert TargetScope([pattern]).allows(name) is allowed


# (pattern, folder, may hold an allowed file)
FOLDERS = [
    ("studies/123/*.dcm", "", True),
    ("studies/123/*.dcm", "studies", True),
    ("studies/123/*.dcm", "studies/123", True),
    ("studies/123/*.dcm", "studies/456", False),
    ("studies/123/*.dcm", "studies/123/sub", False),
    ("studies/123/*.dcm", "other", False),
    ("studies/*/ct.dcm", "studies/anything", True),
    ("*", "", True),
    ("*", "a", False),
    ("**", "a/b/c", True),
    ("a/**", "a", True),
    ("a/**", "a/b", True),
    ("a/**", "b", False),
    ("**/x.dcm", "deep/down", True),
    ("a/x.jp2", "a/x.jp2", False),  # a file's name as a folder: nothing below it
]


@pytest.mark.parametrize("pattern, folder, shown", FOLDERS)
def test_folders(pattern: str, folder: str, shown: bool) -> None:
    assert TargetScope([pattern]).may_contain(folder) is shown


def test_several_patterns_and_none() -> None:
    scope = TargetScope(["a/*.jp2", "b/**"])
    assert scope.allows("a/x.jp2") and scope.allows("b/c/d.j2k") and not scope.allows("c.jp2")
    empty = TargetScope([])
    assert not empty.allows("a.jp2") and not empty.may_contain("")


@pytest.mark.parametrize("patterns", [
    "studies/*", b"x", 5, None, [5], [""], ["/"], ["a/../b"], ["a\\b"], ["a\x00"],
    ["x" * 1025], ["img[z-a].jp2"], ["img[a--z].jp2"], ["x"] * (MAX_PATTERNS + 1),
])
def test_malformed_claims(patterns) -> None:
    with pytest.raises(PatternError) as info:
        TargetScope(patterns)
    assert "xxxx" not in str(info.value)  # patterns are not quoted back


def test_name_parts() -> None:
    assert name_parts("./a//b/") == ("a", "b")
    assert name_parts("a/../b") is None and name_parts("a\\b") is None
    assert name_parts("") == ()


def test_many_double_stars_stay_cheap() -> None:
    # Memoised matching: (segments of the pattern) x (segments of the name), not exponential.
    scope = TargetScope(["/".join(["**", "x"] * 12) + "/y.jp2"])
    assert not scope.allows("/".join(["x"] * 60) + "/z.jp2")


_seg = st.text("ab*?[]!-.", min_size=1, max_size=6).filter(
    lambda s: "**" not in s and s not in (".", ".."))
_name = st.text("ab.-[]!", min_size=1, max_size=5).filter(lambda s: s not in (".", ".."))


@given(_seg, _name)
@settings(max_examples=2000)
def test_one_segment_is_fnmatch(pattern: str, name: str) -> None:
    try:
        scope = TargetScope([pattern])
    except PatternError:
        return  # e.g. a reversed range, which fnmatch would also refuse (re.error)
    assert scope.allows(name) == fnmatch.fnmatchcase(name, pattern)
