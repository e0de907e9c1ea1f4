"""JPX files made by the tests: several codestreams (frames) with one XML box per frame.

`frame_xml_jpx` writes what JPX movies of solar images look like (helioviewer's, made with
kdu_merge): a JP2 header, then per frame a codestream header box, a compositing layer header
box and the contiguous codestream, and the metadata at the end: per frame an association of
a number list (codestream k, compositing layer k) with that frame's XML box, all of them in
one enclosing association (`grouped=True`, as glymur's heliov.jpx has them) or each at the top
level (`grouped=False`).
"""
from __future__ import annotations

import struct
from pathlib import Path

from codestream.markers import Reader, parse_siz, read_segment

__all__ = ["box", "frame_xml", "frame_xml_jpx"]


def box(box_type: bytes, contents: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(contents), box_type) + contents


def _ihdr(codestream: bytes) -> bytes:
    seg = read_segment(codestream, 2, len(codestream))
    siz = parse_siz(Reader(codestream, seg.body_offset, seg.end), seg)
    c = siz.components[0]
    bpc = (c.precision - 1) | (0x80 if c.signed else 0)
    return box(b"ihdr", struct.pack(">IIHBBBB", siz.height, siz.width, siz.num_components,
                                    bpc, 7, 0, 0))


def frame_xml(k: int) -> bytes:
    """The XML of frame k (its size grows with k, so some are placed in bins of their own
    and some are not)."""
    fill = "x" * (40 * k)
    return (f'<meta><fits><FRAME>{k}</FRAME><T_OBS>2014-01-01T00:00:{k:02d}</T_OBS>'
            f'<NOTE>{fill}</NOTE></fits></meta>').encode()


def frame_xml_jpx(path: Path, codestreams: list[bytes], *, grouped: bool = True) -> Path:
    """Writes the JPX (greyscale codestreams) and returns its path."""
    grey = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17))
    out = bytearray(box(b"jP  ", b"\r\n\x87\n"))
    out += box(b"ftyp", b"jpx \x00\x00\x00\x00jpx jp2 ")
    out += box(b"jp2h", _ihdr(codestreams[0]) + grey)
    for cs in codestreams:
        out += box(b"jpch", _ihdr(cs))
        out += box(b"jplh", box(b"cgrp", grey))
        out += box(b"jp2c", cs)
    pairs = [box(b"asoc", box(b"nlst", struct.pack(">II", 0x01000000 | k, 0x02000000 | k))
                 + box(b"xml ", frame_xml(k))) for k in range(len(codestreams))]
    if grouped:
        out += box(b"asoc", b"".join(pairs))
    else:
        for p in pairs:
            out += p
    path.write_bytes(bytes(out))
    return path
