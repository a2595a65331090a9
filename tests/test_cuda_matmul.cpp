// cuda:matmul — cuda::matmul / cuda::gemm (cuBLASLt, and the tiled fallback) against ref:: loops: f32 with
// kTolF32 (no TF32), bf16 and f16 with their tolerances, all four transpose combinations, batched and
// shared-B (broadcast) batches, odd shapes that take the fallback, views read in place, alpha/beta and
// padded leading dimensions, a large product; and the recorded op's gradients on Cuda against the same graph
// on Cpu. Runs only with a GPU (cuda_test_main.cpp exits 77, "skipped", without one).
#include <limits>
#include <random>
#include <sstream>

#include "cuda_harness.hpp"
#include "distill/cuda/matmul.hpp"
#include "distill/ops/matmul.hpp"

using namespace distill;
using namespace distill::test;

namespace {
Shape mk(const Shape& batch, int64_t r, int64_t c) {
  Shape s = batch;
  s.push_back(r);
  s.push_back(c);
  return s;
}

std::string describe(const Shape& sa, bool ta, const Shape& sb, bool tb) {
  std::ostringstream os;
  os << "A" << sa << (ta ? "ᵀ" : "") << " · B" << sb << (tb ? "ᵀ" : "");
  return os.str();
}

// Values k/8 with |k| <= 4: exact in bf16, and every product and partial sum of a GEMM with K < 2^18 is
// exact in f32, so a large product has one correct answer whatever the summation order.
Tensor<float> dyadic(const Shape& s, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(-4, 4);
  auto t = Tensor<float>::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(u(g)) / 8.0f;
  return t;
}

// Every transpose / batch / shared-B combination at one size: device forward vs ref:: in T.
template <class T>
void check_forward_grid(int64_t M, int64_t K, int64_t N, Tol tol, int seed) {
  for (Shape batch : {Shape{}, Shape{3}, Shape{2, 2}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool shared : {false, true}) {
          if (batch.rank() == 0 && shared) continue;
          const Shape sa = mk(batch, ta ? K : M, ta ? M : K);
          const Shape sb = shared ? mk({}, tb ? N : K, tb ? K : N) : mk(batch, tb ? N : K, tb ? K : N);
          auto a = Tensor<float>::uniform(sa, seed++).cast<T>(), b = Tensor<float>::uniform(sb, seed++).cast<T>();
          check_close(cuda::matmul(to_dev(a), to_dev(b), ta, tb), ref::matmul(a, b, ta, tb), tol,
                      std::string(dtype_name_v<T>) + " " + describe(sa, ta, sb, tb));
        }
}

// The Var graph C = matmul(A, B) run on Cpu and on Cuda from the same values, backward twice (the second
// pass adds into existing gradients); the gradients must agree.
template <class T>
void check_grads(const Shape& batch, int64_t M, int64_t K, int64_t N, bool ta, bool tb, bool shared, bool grad_b,
                 Tol tol, int seed) {
  const Shape sa = mk(batch, ta ? K : M, ta ? M : K);
  const Shape sb = shared ? mk({}, tb ? N : K, tb ? K : N) : mk(batch, tb ? N : K, tb ? K : N);
  const std::string what = std::string(dtype_name_v<T>) + " grad of " + describe(sa, ta, sb, tb);
  auto a = Tensor<float>::uniform(sa, seed).cast<T>(), b = Tensor<float>::uniform(sb, seed + 1).cast<T>();
  auto seed_grad = Tensor<float>::uniform(mk(batch, M, N), seed + 2).cast<T>();
  Var<T> ha(a, true), hb(b, grad_b);
  Var<T, Cuda> da(to_dev(a), true), db(to_dev(b), grad_b);
  for (int pass = 0; pass < 2; ++pass) {
    matmul(ha, hb, ta, tb).backward(seed_grad);
    matmul(da, db, ta, tb).backward(to_dev(seed_grad));
  }
  check_close(da.grad(), ha.grad(), tol, "dA, " + what);
  if (grad_b)
    check_close(db.grad(), hb.grad(), tol, "dB, " + what);
  else
    CHECK(!db.grad().defined());
}
}  // namespace

TEST_CASE("cuda:matmul") {
  SUBCASE("f32 vs ref::, every transpose, batched and shared B, odd and aligned sizes") {
    check_forward_grid<float>(7, 13, 5, kTolF32, 1);
    check_forward_grid<float>(64, 96, 40, kTolF32, 100);
  }
  SUBCASE("bf16 and f16 vs ref::: aligned sizes take cuBLASLt, odd sizes the tiled kernel") {
    auto before = cuda::detail::gemm_counters();
    check_forward_grid<bf16>(64, 96, 40, kTolBf16, 200);
    auto after = cuda::detail::gemm_counters();
    CHECK(after.cublaslt > before.cublaslt);
    CHECK(after.tiled == before.tiled);  // every layout above is 16-byte aligned
    check_forward_grid<bf16>(7, 13, 5, kTolBf16, 300);
    CHECK(cuda::detail::gemm_counters().tiled > after.tiled);
    check_forward_grid<f16>(64, 96, 40, kTolF16, 400);
    check_forward_grid<f16>(7, 13, 5, kTolF16, 500);
  }
  SUBCASE("odd shape [3,7] x [7,5]") {
    auto a = Tensor<float>::uniform({3, 7}, 11), b = Tensor<float>::uniform({7, 5}, 12);
    check_close(cuda::matmul(to_dev(a), to_dev(b)), ref::matmul(a, b), kTolF32, "f32 [3,7]x[7,5]");
    auto a16 = a.cast<bf16>(), b16 = b.cast<bf16>();
    auto before = cuda::detail::gemm_counters();
    check_close(cuda::matmul(to_dev(a16), to_dev(b16)), ref::matmul(a16, b16), kTolBf16, "bf16 [3,7]x[7,5]");
    CHECK(cuda::detail::gemm_counters().tiled == before.tiled + 1);  // ld 7 and 5: not 16-byte multiples
    // a single row, and K = 1
    auto r = Tensor<float>::uniform({1, 7}, 13);
    check_close(cuda::matmul(to_dev(r), to_dev(b)), ref::matmul(r, b), kTolF32, "one row");
    auto k1a = Tensor<float>::uniform({4, 1}, 14), k1b = Tensor<float>::uniform({1, 6}, 15);
    check_close(cuda::matmul(to_dev(k1a), to_dev(k1b)), ref::matmul(k1a, k1b), kTolF32, "K = 1");
  }
  SUBCASE("K = 0 gives zeros; empty outputs") {
    auto c = cuda::matmul(Tensor<float, Cuda>::zeros({3, 0}), Tensor<float, Cuda>::zeros({0, 4}));
    check_close(c, Tensor<float>::zeros({3, 4}), kTolF32, "K = 0");
    CHECK(cuda::matmul(Tensor<bf16, Cuda>::zeros({0, 8}), Tensor<bf16, Cuda>::zeros({8, 8})).numel() == 0);
  }
  SUBCASE("views are read in place: transposed and sliced operands") {
    auto a = Tensor<float>::uniform({2, 16, 24}, 21), b = Tensor<float>::uniform({16, 8}, 22);
    auto da = to_dev(a), db = to_dev(b);
    // aᵀ as a view: [2, 24, 16] column-major in its last two axes
    check_close(cuda::matmul(da.transpose(1, 2), db), ref::matmul(a.transpose(1, 2).contiguous(), b), kTolF32,
                "transposed view of A");
    check_close(cuda::matmul(db.transpose(0, 1), db, false, false), ref::matmul(b.transpose(0, 1).contiguous(), b),
                kTolF32, "transposed view of B as A");
    // a column slice: rows padded to 24 elements
    check_close(cuda::matmul(da.slice(2, 0, 16), db), ref::matmul(a.slice(2, 0, 16).contiguous(), b), kTolF32,
                "column slice of A (row stride 24)");
    auto a16 = a.cast<bf16>(), b16 = b.cast<bf16>();
    check_close(cuda::matmul(to_dev(a16).slice(2, 8, 24), to_dev(b16)),
                ref::matmul(a16.slice(2, 8, 24).contiguous(), b16), kTolBf16, "bf16 column slice, 16-byte offset");
    // interleaved batches: [4, 5, 6] viewed as [5, 4, 6] (row stride 30, batch stride 6), read in place
    auto c = Tensor<float>::uniform({4, 5, 6}, 23), w = Tensor<float>::uniform({5, 6, 3}, 24);
    check_close(cuda::matmul(to_dev(c).transpose(0, 1), to_dev(w)), ref::matmul(c.transpose(0, 1).contiguous(), w),
                kTolF32, "interleaved batches");
    // batch dims that do not collapse into one stride: copied first
    auto e = Tensor<float>::uniform({2, 3, 4, 5}, 25), v = Tensor<float>::uniform({2, 2, 5, 7}, 26);
    check_close(cuda::matmul(to_dev(e).slice(1, 0, 2), to_dev(v)), ref::matmul(e.slice(1, 0, 2).contiguous(), v),
                kTolF32, "batch slice that needs a copy");
  }
  SUBCASE("gemm: alpha, beta, padded leading dims, broadcast batch; and the tiled kernel on its own") {
    const int64_t M = 24, N = 16, K = 32, P = 3, pad = 8;
    for (bool tiled : {false, true})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
          const int64_t ra = ta ? K : M, rb = tb ? N : K;
          // A batched with padded rows; B one matrix broadcast over the batch (stride 0); C padded.
          auto a = Tensor<float>::uniform({P, ra, lda}, 31), b = Tensor<float>::uniform({rb, ldb}, 32);
          auto c0 = Tensor<float>::uniform({P, M, ldc}, 33);
          auto dA = to_dev(a), dB = to_dev(b), dC = to_dev(c0);
          const float alpha = 0.5f, beta = -2.0f;
          auto run = tiled ? cuda::detail::gemm_tiled<float> : cuda::gemm<float>;
          run(dA.data(), lda, ta, dB.data(), ldb, tb, dC.data(), ldc, M, N, K, P, ra * lda, 0, M * ldc, alpha, beta);
          // expected: alpha * op(A)·op(B) + beta * C on the [.., :N] part; the padding untouched
          auto prod =
              ref::matmul(a.slice(2, 0, ta ? M : K).contiguous(), b.slice(1, 0, tb ? K : N).contiguous(), ta, tb);
          auto want = c0.clone();
          for (int64_t p = 0; p < P; ++p)
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < N; ++j)
                want(p, i, j) = static_cast<float>(alpha * static_cast<double>(prod(p, i, j)) +
                                                   beta * static_cast<double>(c0(p, i, j)));
          check_close(dC, want, kTolF32,
                      std::string(tiled ? "gemm_tiled" : "gemm") + (ta ? " Aᵀ" : " A") + (tb ? " · Bᵀ" : " · B"));
        }
    // beta = 0 never reads C: NaN there must not leak into the result
    auto a = Tensor<float>::uniform({8, 8}, 41), b = Tensor<float>::uniform({8, 8}, 42);
    for (bool tiled : {false, true}) {
      auto c = Tensor<float, Cuda>::full({8, 8}, std::numeric_limits<float>::quiet_NaN());
      auto da = to_dev(a), db = to_dev(b);
      (tiled ? cuda::detail::gemm_tiled<float> : cuda::gemm<float>)(da.data(), 8, false, db.data(), 8, false, c.data(),
                                                                    8, 8, 8, 8, 1, 0, 0, 0, 1.f, 0.f);
      check_close(c, ref::matmul(a, b), kTolF32, tiled ? "tiled, beta = 0 over NaN" : "beta = 0 over NaN");
    }
  }
  SUBCASE("the heuristic is queried once per layout") {
    auto a = to_dev(Tensor<float>::uniform({40, 72}, 51).cast<bf16>());
    auto b = to_dev(Tensor<float>::uniform({72, 56}, 52).cast<bf16>());
    (void)cuda::matmul(a, b);
    const auto before = cuda::detail::gemm_counters();
    for (int i = 0; i < 5; ++i) (void)cuda::matmul(a, b);
    const auto after = cuda::detail::gemm_counters();
    CHECK(after.heuristic_queries == before.heuristic_queries);
    CHECK(after.cublaslt == before.cublaslt + 5);
  }
  SUBCASE("a large product: [512, 1152] x [1152, 2048], f32 and bf16") {
    const auto a = dyadic({512, 1152}, 61), b = dyadic({1152, 2048}, 62);
    const auto c = cuda::matmul(to_dev(a), to_dev(b));
    // 1.2 G multiply-adds: the whole product against Eigen (exact here, see dyadic), 64 rows against ref::.
    check_close(c, cpu::matmul(a, b), kTolF32, "f32 512x1152x2048 vs cpu::matmul");
    check_close(to_host(c).slice(0, 0, 64), ref::matmul(a.slice(0, 0, 64), b), kTolF32,
                "f32 512x1152x2048, rows 0..63 vs ref::");
    const auto a16 = a.cast<bf16>(), b16 = b.cast<bf16>();
    const auto c16 = cuda::matmul(to_dev(a16), to_dev(b16));
    check_close(c16, cpu::matmul(a16, b16), kTolBf16, "bf16 512x1152x2048 vs cpu::matmul");
    check_close(to_host(c16).slice(0, 448, 512), ref::matmul(a16.slice(0, 448, 512), b16), kTolBf16,
                "bf16 512x1152x2048, rows 448..511 vs ref::");
    // the same with the weight in nn.Linear layout ([out, in], trans_b) and random values
    const auto x = Tensor<float>::uniform({512, 1152}, 63).cast<bf16>();
    const auto w = Tensor<float>::uniform({2048, 1152}, 64).cast<bf16>();
    check_close(to_host(cuda::matmul(to_dev(x), to_dev(w), false, true)).slice(0, 0, 32),
                ref::matmul(x.slice(0, 0, 32), w, false, true), kTolBf16, "bf16 x · wᵀ, rows 0..31 vs ref::");
  }
  SUBCASE("errors name the shapes") {
    auto e = shape_error_of([] {
      (void)cuda::matmul(Tensor<float, Cuda>::zeros({2, 3}), Tensor<float, Cuda>::zeros({4, 5}));
    });
    CHECK(contains(e, "[2, 3]"));
    CHECK(contains(e, "[4, 5]"));
    CHECK_THROWS_AS(cuda::matmul(Tensor<float, Cuda>::zeros({2, 2, 3}), Tensor<float, Cuda>::zeros({3, 3, 5})),
                    ShapeError);
    auto c = Tensor<float, Cuda>::zeros({4, 4});
    check_throws_naming<Error>(
        [&] { cuda::gemm<float>(c.data(), 2, false, c.data(), 4, false, c.data(), 4, 4, 4, 4, 1, 0, 0, 0); },
        {"lda", "K = 4"}, "lda smaller than K");
    check_throws_naming<Error>(
        [&] { cuda::gemm<float>(c.data(), 4, false, c.data(), 4, false, c.data(), 4, 2, 2, 2, 2, 4, 4, 0); },
        {"stride_c = 0"}, "batched gemm into one C");
  }
}

TEST_CASE("cuda:matmul gradients vs the Cpu graph") {
  SUBCASE("every transpose, batched and shared B, f32 and bf16, odd and aligned sizes") {
    int seed = 1000;
    for (Shape batch : {Shape{}, Shape{3}})
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (bool shared : {false, true}) {
            if (batch.rank() == 0 && shared) continue;
            check_grads<float>(batch, 7, 13, 5, ta, tb, shared, true, kTolF32, seed += 3);
            check_grads<float>(batch, 16, 24, 40, ta, tb, shared, true, kTolF32, seed += 3);
            check_grads<bf16>(batch, 16, 24, 40, ta, tb, shared, true, kTolBf16, seed += 3);
            check_grads<bf16>(batch, 7, 13, 5, ta, tb, shared, true, kTolBf16, seed += 3);
          }
    // a frozen weight gets no gradient; its input still does
    check_grads<float>({2}, 8, 16, 24, false, true, true, false, kTolF32, 77);
  }
  SUBCASE("a model-sized layer: 256 tokens x 1152 -> 6912, weight in nn.Linear layout") {
    check_grads<bf16>({}, 256, 1152, 6912, false, true, false, true, kTolBf16, 78);
  }

  SUBCASE("a chain, and one Var used on both sides") {
    auto x = Tensor<float>::uniform({2, 8, 16}, 81), w1 = Tensor<float>::uniform({16, 24}, 82);
    auto w2 = Tensor<float>::uniform({12, 24}, 83), s = Tensor<float>::uniform({2, 8, 12}, 84);
    Var<float> hx(x, true), hw1(w1, true), hw2(w2, true);
    Var<float, Cuda> dx(to_dev(x), true), dw1(to_dev(w1), true), dw2(to_dev(w2), true);
    matmul(matmul(hx, hw1), hw2, false, true).backward(s);
    matmul(matmul(dx, dw1), dw2, false, true).backward(to_dev(s));
    check_close(dx.grad(), hx.grad(), kTolF32, "chain dx");
    check_close(dw1.grad(), hw1.grad(), kTolF32, "chain dw1");
    check_close(dw2.grad(), hw2.grad(), kTolF32, "chain dw2");
    auto q = Tensor<float>::uniform({3, 8, 8}, 85), g = Tensor<float>::uniform({3, 8, 8}, 86);
    Var<float> hq(q, true);
    Var<float, Cuda> dq(to_dev(q), true);
    matmul(hq, hq, false, true).backward(g);
    matmul(dq, dq, false, true).backward(to_dev(g));
    check_close(dq.grad(), hq.grad(), kTolF32, "q · qᵀ");
  }
  SUBCASE("16-bit gradients of a shared weight sum over the batch in f32 (a bf16 running sum stalls at 256)") {
    for (bool ta : {false, true}) {
      Var<bf16, Cuda> a(Tensor<bf16, Cuda>::full({4096, 1, 1}, bf16(1.0f)), true);
      Var<bf16, Cuda> b(Tensor<bf16, Cuda>::full({1, 1}, bf16(1.0f)), true);
      matmul(a, b, ta, false).backward(Tensor<bf16, Cuda>::full({4096, 1, 1}, bf16(1.0f)));
      CHECK(static_cast<float>(to_host(b.grad()).data()[0]) == 4096.0f);
    }
  }
}
