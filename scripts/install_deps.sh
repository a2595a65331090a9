#!/usr/bin/env bash
# The system packages Distill builds and tests with (Debian 12): installs the missing ones with apt (as root, or
# with sudo). Used by scripts/test.sh (CI) and scripts/demo.sh.
set -euo pipefail

pkgs=(cmake ninja-build g++ ccache pkg-config libeigen3-dev doctest-dev libbenchmark-dev clang-format
      nlohmann-json3-dev libcli11-dev libutf8proc-dev libpcre2-dev clang libclang-rt-dev libomp-dev
      libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

