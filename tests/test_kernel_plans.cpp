// Host-side launch planning of the CUDA kernels (tiling, vector widths, chunk sizes): plain functions in
// include/distill/cuda/*.hpp that need no GPU, so they are checked on every machine, CI included.
#include <doctest/doctest.h>

#include <cstdint>

#include "distill/cuda/cross_entropy.hpp"
#include "distill/cuda/reduce.hpp"
#include "distill/cuda/rmsnorm.hpp"
#include "distill/cuda/rope.hpp"
#include "harness.hpp"

using namespace distill;
using namespace distill::test;

TEST_CASE("plan:sum_last rows: every element of a row covered exactly once") {
  for (int bytes : {2, 4})
    for (bool aligned : {true, false})
      for (int64_t K = 1; K <= 300000; K += (K < 600 ? 1 : K / 7 + 1)) {
        const auto p = cuda::plan_rows(3, K, bytes, aligned);
        INFO("K " << K << " bytes " << bytes << " aligned " << aligned);
        REQUIRE(p.block_threads % 32 == 0);
        REQUIRE(p.block_threads <= cuda::kRowMaxThreads);
        REQUIRE((K % p.vec) == 0);
        REQUIRE(p.items == 3 * p.chunks);
        const int lanes = p.warp_per_row ? 32 : p.threads;
        const int64_t nvec = K / p.vec;
        // Chunks tile the row; each chunk fits its item's registers.
        REQUIRE(p.chunk_vecs * (p.chunks - 1) < nvec);
        REQUIRE(p.chunk_vecs * p.chunks >= nvec);
        REQUIRE(int64_t{lanes} * p.vecs_per_thread() >= p.chunk_vecs);
        if (p.warp_per_row) REQUIRE(p.chunks == 1);
      }
  const auto v = cuda::plan_rows(64, 262144, 4, true);  // the Gemma3 vocabulary: 16 chunks of 16384
  CHECK(v.chunks == 16);
  CHECK(v.threads == 1024);
  const auto h = cuda::plan_rows(8192, 4096, 2, true);  // bf16 [8192, 4096]: one block of 256 per row
  CHECK(h.vec == 8);
  CHECK(h.chunks == 1);
  CHECK(h.threads == 256);
  CHECK(cuda::plan_rows(10, 33, 4, true).warp_per_row);
}

TEST_CASE("plan:rms_norm launch plan") {
  // The model sizes.
  const auto q = cuda::plan_rms_norm(2560, 2, true);  // Qwen3-4B hidden, bf16
  CHECK(q.vec == 8);
  CHECK(q.row_threads == 128);
  CHECK(q.packs == 4);
  CHECK(q.rows_per_block == 2);
  const auto h = cuda::plan_rms_norm(128, 2, true);  // a head-dim norm: 4 threads per row, 64 rows per block
  CHECK(h.vec == 8);
  CHECK(h.row_threads == 4);
  CHECK(h.packs == 4);
  CHECK(h.rows_per_block == 64);
  CHECK(cuda::plan_rms_norm(2048, 2, true, true).packs == 2);  // the backward aims at fewer packs
  CHECK(cuda::plan_rms_norm(2048, 2, false).vec == 1);         // unaligned: one element per load
  CHECK(cuda::plan_rms_norm(9, 4, true).vec == 1);             // 9 floats are not whole 16-byte packs
  CHECK(cuda::plan_rms_norm(8192, 4, true, true).packs == 4);  // f32 rows of 8192 stay in registers
  CHECK(cuda::plan_rms_norm(20000, 4, true).long_rows());
  // Every row of up to 8192 elements fits registers; every plan covers its row with whole warps.
  for (int bytes : {2, 4})
    for (bool aligned : {true, false})
      for (bool bwd : {false, true})
        for (int64_t cols = 1; cols <= 9000; cols += (cols < 300 ? 1 : 37)) {
          const auto p = cuda::plan_rms_norm(cols, bytes, aligned, bwd);
          INFO("cols " << cols << " bytes " << bytes << " aligned " << aligned << " backward " << bwd);
          CHECK(p.block_threads() % 32 == 0);
          CHECK(p.block_threads() <= cuda::kRmsNormMaxRowThreads);
          CHECK((cols % p.vec) == 0);
          if (p.long_rows()) {
            CHECK(cols > (p.vec == 1 ? 4096 : 8192));
          } else {
            CHECK(int64_t{p.row_threads} * p.packs * p.vec >= cols);
            CHECK(int64_t{p.row_threads} * (p.packs / 2) * p.vec < cols);  // no idle pack round
          }
        }
}

TEST_CASE("plan:rope launch plan") {
  const auto q = cuda::plan_rope(2, 2048, 32, 128, 2, true);  // Qwen3 q, bf16: 8 pairs per thread
  CHECK(q.vec == 8);
  CHECK(q.items == int64_t{2} * 2048 * 32 * 64 / 8);
  CHECK(q.index32);
  CHECK(cuda::plan_rope(2, 4, 2, 6, 4, true).vec == 1);  // D/2 = 3
  CHECK(cuda::plan_rope(1, 1, 1, 8, 4, true).vec == 4);  // f32: 4 pairs
  CHECK(cuda::plan_rope(1, 1, 1, 8, 2, true).vec == 1);  // bf16: D/2 = 4 is not a whole 16-byte pack
  CHECK(cuda::plan_rope(1, 1, 1, 128, 2, false).vec == 1);
  CHECK(!cuda::plan_rope(64, 8192, 32, 256, 2, true).index32);  // 2^32 elements
}

TEST_CASE("plan:linear_cross_entropy tiling") {
  // Host-side planning (no GPU needed, but it lives with the CUDA cases).
  const auto t = cuda::lce_tiling(4096, 262144, 2);  // Gemma3 loss over 4096 tokens, bf16
  CHECK(t.vocab == 32768);
  CHECK(t.rows == 4096);
  CHECK(t.ld == 32768);
  CHECK(static_cast<size_t>(t.rows * t.ld) * 2 <= cuda::kLceChunkBytes);
  const auto s = cuda::lce_tiling(7, 13, 4);  // everything fits: one chunk
  CHECK(s.vocab == 13);
  CHECK(s.ld == 16);
  CHECK(s.rows == 7);
  const auto f = cuda::lce_tiling(10, 100, 2, 5, 3);  // forced
  CHECK(f.vocab == 5);
  CHECK(f.ld == 8);
  CHECK(f.rows == 3);
  const auto big = cuda::lce_tiling(int64_t{4} << 20, 262144, 2);  // 4M rows: row chunks of the smallest vocabulary
  CHECK(big.vocab == 128);
  CHECK(static_cast<size_t>(big.rows * big.ld) * 2 <= cuda::kLceChunkBytes);
}
