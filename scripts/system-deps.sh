#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing.
# libopenjp2-7: the OpenJPEG library glymur loads; libopenjp2-tools: opj_decompress/opj_dump used
# as oracles by the tests; libopenjpip-dec-server/-server: OpenJPEG's JPIP transcoder and reference
# server (interop tests); nginx-light: the reverse proxy the proxy test runs in front of us;
# nodejs, npm: build the browser viewer (`make viewer`; only when node/npm are not there already,
# e.g. from NodeSource); chromium: the browser the viewer's tests drive.
set -euo pipefail
packages=(libopenjp2-7)
if [ "${1:-}" = "--test" ]; then
  packages+=(curl libopenjp2-tools libopenjpip-dec-server libopenjpip-server nginx-light chromium)
fi
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
