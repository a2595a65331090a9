#!/usr/bin/env bash
# The test command (README, CI): from nothing on Debian 12, as root (or with sudo), install what is
# missing, check formatting, configure, build everything (tests, benchmarks, apps; the CUDA kernels when
# nvcc is present), run the whole test suite, then fuzz every parser for a bounded time (clang libFuzzer).
# Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install_deps.sh

# nvcc lives outside PATH on many machines; the CUDA kernels are compiled whenever it exists.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

echo "== format check"
bash scripts/check_format.sh

echo "== configure + build"
cmake --preset ci
cmake --build --preset ci

echo "== tests"
ctest --preset ci

# 3 s per target keeps CI near its time limit (scripts/fuzz.sh alone defaults to 20 s; FUZZ_SECONDS overrides).
export FUZZ_SECONDS=${FUZZ_SECONDS:-3}
echo "== fuzz (libFuzzer, ${FUZZ_SECONDS} s per target)"
bash scripts/fuzz.sh
