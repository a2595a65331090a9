// op:matmul — the Eigen path vs ref:: loops (all transposes, batched, shared weights, bf16),
// backward vs ref::, gradients vs finite differences, and shape errors.
#include <sstream>

#include "distill/ops/matmul.hpp"
#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {
Shape mk(const Shape& batch, int64_t r, int64_t c) {
  Shape s = batch;
  s.push_back(r);
  s.push_back(c);
  return s;
}
}  // namespace

TEST_CASE("op:matmul") {
  const int64_t M = 7, K = 13, N = 5;
  int seed = 1;
  for (Shape batch : {Shape{}, Shape{3}, Shape{2, 2}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool shared : {false, true}) {
          if (batch.rank() == 0 && shared) continue;
          const Shape sa = mk(batch, ta ? K : M, ta ? M : K);
          const Shape sb = shared ? mk({}, tb ? N : K, tb ? K : N) : mk(batch, tb ? N : K, tb ? K : N);
          std::ostringstream os;  // (string operator+ chains trip GCC 12's false -Wrestrict)
          os << "A" << sa << (ta ? "ᵀ" : "") << " · B" << sb << (tb ? "ᵀ" : "");
          const std::string what = os.str();
          auto a = Tensor<float>::uniform(sa, seed++), b = Tensor<float>::uniform(sb, seed++);
          check_close(cpu::matmul(a, b, ta, tb), ref::matmul(a, b, ta, tb), kTolF32, what);
          auto dc = Tensor<float>::uniform(mk(batch, M, N), seed++);
          auto [da, db] = cpu::matmul_backward(a, b, dc, ta, tb);
          auto [rda, rdb] = ref::matmul_backward(a, b, dc, ta, tb);
          check_close(da, rda, kTolF32, "dA of " + what);
          check_close(db, rdb, kTolF32, "dB of " + what);
        }
  // Gradients vs finite differences (small), including a shared weight.
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_grad([&](const std::vector<Var<double>>& v) { return matmul(v[0], v[1], ta, tb); },
                 {Tensor<double>::uniform(mk({2}, ta ? 3 : 2, ta ? 2 : 3), 5),
                  Tensor<double>::uniform(mk({}, tb ? 4 : 3, tb ? 3 : 4), 6)},
                 {}, "matmul grad shared B");
      check_grad([&](const std::vector<Var<double>>& v) { return matmul(v[0], v[1], ta, tb); },
                 {Tensor<double>::uniform(mk({2}, ta ? 3 : 2, ta ? 2 : 3), 7),
                  Tensor<double>::uniform(mk({2}, tb ? 4 : 3, tb ? 3 : 4), 8)},
                 {}, "matmul grad batched B");
    }
  // bf16 inputs compute in f32 and round once.
  auto a = Tensor<float>::uniform({9, 31}, 3).cast<bf16>(), b = Tensor<float>::uniform({31, 6}, 4).cast<bf16>();
  check_close(cpu::matmul(a, b), ref::matmul(a, b), kTolBf16, "bf16");
  // A large product (Eigen's multi-threaded path).
  auto la = Tensor<float>::uniform({130, 257}, 5), lb = Tensor<float>::uniform({257, 70}, 6);
  check_close(cpu::matmul(la, lb), ref::matmul(la, lb), kTolF32, "130x257x70");
  // Errors name both shapes.
  CHECK_THROWS_AS(cpu::matmul(Tensor<float>::zeros({2, 3}), Tensor<float>::zeros({4, 5})), ShapeError);
  CHECK_THROWS_AS(cpu::matmul(Tensor<float>::zeros({2, 2, 3}), Tensor<float>::zeros({3, 3, 5})), ShapeError);
  CHECK_THROWS_AS(cpu::matmul(Tensor<float>::zeros({3}), Tensor<float>::zeros({3, 5})), ShapeError);
  try {
    (void)cpu::matmul(Tensor<float>::zeros({2, 3}), Tensor<float>::zeros({4, 5}));
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("[2, 3]") != std::string::npos);
    CHECK(std::string(e.what()).find("[4, 5]") != std::string::npos);
  }
  // 16-bit gradients of a shared weight sum over the batch in f32 and round once (a bf16 running sum
  // stalls at 256).
  {
    auto a16 = Tensor<bf16>::full({4096, 1, 1}, bf16(1.0f)), b16 = Tensor<bf16>::full({1, 1}, bf16(1.0f));
    auto dc16 = Tensor<bf16>::full({4096, 1, 1}, bf16(1.0f));
    for (bool ta : {false, true}) {
      auto [da16, db16] = cpu::matmul_backward(a16, b16, dc16, ta, false);
      CHECK(static_cast<float>(db16.data()[0]) == 4096.0f);
      auto [rda16, rdb16] = ref::matmul_backward(a16, b16, dc16, ta, false);
      CHECK(static_cast<float>(rdb16.data()[0]) == 4096.0f);
    }
  }
}
