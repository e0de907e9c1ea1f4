#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing.
# python3-venv: `python3 -m venv` (missing on a fresh Debian; checked on the Python in use,
# $PYTHON, which may not be Debian's); libopenjp2-7: the OpenJPEG library glymur loads;
# libopenjp2-tools: opj_compress, the JPEG 2000 encoder of `jpip prepare IN.dcm OUT.dcm` (signed
# samples and any bit depth, which glymur cannot write), and opj_decompress/opj_dump, the tests'
# oracles; openjph-tools: ojph_compress, the HTJ2K encoder of `jpip prepare --htj2k` (and of
# the encoder sweep, tests/interop/test_encoders.py); grokj2k-tools (test): Grok's grk_compress
# and grk_decompress, the sweep's other encoder and second decoder;
# nodejs, npm: build the browser viewer (`make viewer`; only when node/npm are not there
# already, e.g. from NodeSource); libopenjpip-dec-server/-server: OpenJPEG's JPIP transcoder and
# reference server (interop tests); nginx-light: the reverse proxy the proxy tests run in front of us;
# chromium: the browser the viewer's tests drive; redis-server: the shared session store the
# scale-out tests (several server processes) and `python -m bench scaleout` start; openssl:
# the certificates of the rediss:// (TLS) test; gcc, libc6-dev and python3-dev (the latter
# only when the Python in use has no headers): build the C packet-header decoder
# codestream._headers at install (optional: without them the pure-Python decoder is used).
#   --test   also what the tests need
#   --print  print the missing packages, one a line, and install nothing
set -euo pipefail
test_deps=0
print_only=0
for arg in "$@"; do
  case "$arg" in
    --test) test_deps=1 ;;
    --print) print_only=1 ;;
    *) echo "usage: $0 [--test] [--print]" >&2; exit 2 ;;
  esac
done
packages=(libopenjp2-7 libopenjp2-tools openjph-tools gcc libc6-dev)
if [ "$test_deps" = 1 ]; then
  packages+=(curl libopenjpip-dec-server libopenjpip-server nginx-light chromium redis-server
             openssl grokj2k-tools)
fi
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Debian ships ensurepip (which `-m venv` runs) in python3-venv.
if ! "${PYTHON:-python3}" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
# Python.h of the Python that makes the venv (a Debian python3 needs python3-dev; pyenv's and
# python.org's builds bring their own).
if ! "${PYTHON:-python3}" -c "import os, sysconfig, sys; sys.exit(not os.path.isfile(
    os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" >/dev/null 2>&1; then
  missing+=(python3-dev)
fi
if [ "$print_only" = 1 ]; then
  [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}"
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
