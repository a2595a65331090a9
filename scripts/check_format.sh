#!/usr/bin/env bash
# Fails when any C++/CUDA file of the tree (tracked, or new and not ignored: what the next commit may add) differs
# from .clang-format's output. Fix with: scripts/check_format.sh --fix
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.hpp' '*.cpp' '*.cu' '*.cuh' 2>/dev/null || find include tests bench apps kernels -name '*.[hc]pp' -o -name '*.cu')
[ ${#files[@]} -gt 0 ] || exit 0
if [ "${1:-}" = "--fix" ]; then clang-format -i "${files[@]}"; exit 0; fi
bad=()
for f in "${files[@]}"; do clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f"); done
if [ ${#bad[@]} -gt 0 ]; then
  echo "clang-format would change: ${bad[*]}"
  echo "run: scripts/check_format.sh --fix"
  exit 1
fi
echo "format ok (${#files[@]} files)"
