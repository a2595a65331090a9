#!/usr/bin/env bash
# Copies the build dependencies (Eigen 3.4, doctest, and Google Benchmark for bench/gpu_nf4) from this machine
# into .deps/prefix, a
# git-ignored CMake prefix that travels to a GPU machine with no package access (device tool: carry
# [".deps"]). scripts/device_check.sh uses it when the machine lacks them. About 10 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
P=.deps/prefix
rm -rf .deps && mkdir -p $P/include $P/share/eigen3/cmake $P/lib/cmake/doctest
cp -r /usr/include/eigen3 $P/include/
cp -r /usr/include/doctest $P/include/
cp /usr/share/eigen3/cmake/Eigen3ConfigVersion.cmake $P/share/eigen3/cmake/
cat > $P/share/eigen3/cmake/Eigen3Config.cmake <<'CFG'
# Relocatable stand-in for Eigen's package config (staged by scripts/stage_device_deps.sh).
get_filename_component(_eigen_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET Eigen3::Eigen)
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_eigen_prefix}/include/eigen3")
endif()
set(EIGEN3_INCLUDE_DIR "${_eigen_prefix}/include/eigen3")
set(Eigen3_FOUND TRUE)
CFG
cp /usr/lib/cmake/doctest/doctestConfigVersion.cmake /usr/lib/cmake/doctest/doctest.cmake \
   /usr/lib/cmake/doctest/doctestAddTests.cmake $P/lib/cmake/doctest/
cat > $P/lib/cmake/doctest/doctestConfig.cmake <<'CFG'
# Relocatable stand-in for doctest's package config (staged by scripts/stage_device_deps.sh).
get_filename_component(_doctest_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_doctest_prefix}/include")
endif()
set(doctest_FOUND TRUE)
CFG
# Google Benchmark (Debian's shared library; the GPU machine's glibc/libstdc++ suffice) for bench/gpu_nf4.
if [ -f /usr/include/benchmark/benchmark.h ]; then
  mkdir -p $P/lib/cmake/benchmark
  cp -r /usr/include/benchmark $P/include/
  so=$(readlink -f /usr/lib/x86_64-linux-gnu/libbenchmark.so)
  cp "$so" $P/lib/libbenchmark.so.1debian
  cat > $P/lib/cmake/benchmark/benchmarkConfig.cmake <<'CFG'
# Relocatable stand-in for Google Benchmark's package config (staged by scripts/stage_device_deps.sh).
get_filename_component(_benchmark_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET benchmark::benchmark)
  add_library(benchmark::benchmark SHARED IMPORTED)
  set_target_properties(benchmark::benchmark PROPERTIES
    IMPORTED_LOCATION "${_benchmark_prefix}/lib/libbenchmark.so.1debian"
    IMPORTED_SONAME "libbenchmark.so.1debian"
    INTERFACE_INCLUDE_DIRECTORIES "${_benchmark_prefix}/include")
endif()
set(benchmark_FOUND TRUE)
CFG
fi
grep -qx '/.deps/' .git/info/exclude 2>/dev/null || echo '/.deps/' >> .git/info/exclude
du -sh .deps
# The real tokenizers (gzipped: the carry limit is 64 MiB) and a slice of GSM8K for device_check's real-shape
# pipeline, from ../shared beside the checkout (git-ignored here, never committed).
SH=../shared
if [ -d $SH/tokenizers ] && [ -d $SH/data/gsm8k ]; then
  for m in qwen3 gemma3; do
    mkdir -p .deps/tokenizers/$m
    gzip -9 -c $SH/tokenizers/$m/tokenizer.json >.deps/tokenizers/$m/tokenizer.json.gz
    cp $SH/tokenizers/$m/tokenizer_config.json .deps/tokenizers/$m/
  done
  mkdir -p .deps/gsm8k
  head -200 $SH/data/gsm8k/train.jsonl >.deps/gsm8k/train.jsonl
  head -200 $SH/data/gsm8k/test.jsonl >.deps/gsm8k/test.jsonl
fi
du -sh .deps
