#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (clang, ASan + UBSan), bounded in time: every fuzz/fuzz_<name>.cpp
# runs for FUZZ_SECONDS (default 20) from a copy of its committed seeds in fuzz/corpus/<name>/. A crash,
# leak, timeout (>10 s on one input) or memory blow-up (>2 GB) fails the script; the reproducer is left in
# build/fuzz/artifacts/. Usage: scripts/fuzz.sh [name...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
build=build/fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISTILL_FUZZ=ON \
  -DDISTILL_WITH_CUDA=OFF -DDISTILL_BUILD_TESTS=OFF -DDISTILL_BUILD_APPS=OFF -DDISTILL_BUILD_BENCH=OFF >/dev/null
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); names+=("${n#fuzz_}"); done
fi
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build "$build" --target "${targets[@]}"
mkdir -p "$build/artifacts"
for n in "${names[@]}"; do
  work="$build/corpus/$n"
  mkdir -p "$work"
  echo "== fuzz $n for ${secs}s"
  # -fork=0: one process; -rss_limit_mb bounds memory per input; -timeout flags hangs.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    "$build/fuzz/fuzz_$n" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$n-" "$work" "fuzz/corpus/$n" 2>&1 | tail -n 12
done
echo "fuzz ok: ${names[*]}"
