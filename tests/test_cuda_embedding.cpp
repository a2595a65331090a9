// Embedding on Cuda (kernels/embedding.cu): the gather against ref:: (bit-exact: it is a copy), the
// scatter-add against ref:: and against the CPU backend's gradient from the same start (the same summation
// order and rounding, so bit-identical), determinism with many repeated ids, both id overloads (host and
// device ids), ids kept for backward, and out-of-range ids named in the error.
#include <cstring>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/embedding.hpp"

using namespace distill;
using namespace distill::test;

namespace {

Tensor<int32_t> random_ids(const Shape& s, uint64_t seed, int64_t V) {
  auto u = Tensor<double>::uniform(s, seed, 0.0, static_cast<double>(V));
  auto ids = Tensor<int32_t>::empty(s);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.flat(i) = static_cast<int32_t>(u.flat(i));
  return ids;
}

Shape with_back(Shape s, int64_t c) {
  s.push_back(c);
  return s;
}

struct Case {
  int64_t V, C;
  Shape ids;
};

// Forward vs ref, backward (accumulating onto a random gradient) vs ref and vs the CPU backend.
template <class T>
void check_case(const Case& c, uint64_t seed) {
  const std::string tag = std::string(dtype_name_v<T>) + " V " + std::to_string(c.V) + ", C " + std::to_string(c.C) +
                          ", ids " + c.ids.str();
  INFO(tag);
  const auto w = Tensor<float>::uniform({c.V, c.C}, seed).cast<T>();
  const auto ids = random_ids(c.ids, seed + 1, c.V);
  const auto g = Tensor<float>::uniform(with_back(c.ids, c.C), seed + 2).cast<T>();
  const auto dw0 = Tensor<float>::uniform({c.V, c.C}, seed + 3).cast<T>();

  auto wd = Var<T, Cuda>::param(to_dev(w));
  wd.grad_buffer().copy_from(to_dev(dw0));
  auto yd = embedding(wd, ids);
  REQUIRE(yd.shape() == with_back(c.ids, c.C));
  CHECK_MESSAGE(same_bits(to_host(yd.value()), ref::embedding(w, ids)), "the gather is an exact copy " << tag);
  yd.backward(to_dev(g));

  auto want = Tensor<double>::zeros({c.V, c.C});
  want.copy_from(dw0.template cast<double>());
  ref::embedding_backward_accumulate(want, ids, g.template cast<double>());
  check_close(wd.grad(), want, tol_for<T>(), "backward vs ref " + tag);

  // The CPU backend from the same start: same order of summation, same rounding -> the same bits.
  auto wc = Var<T>::param(w);
  wc.grad_buffer().copy_from(dw0);
  embedding(wc, ids).backward(g);
  check_close(wd.grad(), wc.grad(), tol_for<T>(), "backward vs the CPU backend " + tag);
  CHECK_MESSAGE(same_bits(to_host(wd.grad()), wc.grad()), "Cuda and CPU gradients are bit-identical " << tag);
}

}  // namespace

TEST_CASE("cuda:embedding") {
  // Odd sizes (scalar paths), ids of rank 1..3, no ids, heavy repeats (V = 5), 16-byte rows (vector paths),
  // and the model hidden sizes (Gemma3 1152, Qwen3 2560) on a reduced vocabulary.
  const std::vector<Case> cases{{11, 7, {3, 4}},        {11, 7, {5}},         {6, 1, {2, 2, 3}}, {9, 4, {0}},
                                {5, 13, {200}},         {1000, 33, {64, 50}}, {1000, 64, {300}}, {4, 256, {1000}},
                                {4096, 1152, {2, 512}}, {4096, 2560, {1024}}, {262144, 8, {64}}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    check_case<float>(c, seed += 10);
    check_case<bf16>(c, seed += 10);
  }
}

TEST_CASE("cuda:embedding deterministic scatter-add with duplicate ids") {
  // 4096 ids over 7 rows (each row ~600 times), plus one id repeated 3000 times in a row: two runs of the
  // backward from zero give the same bits, and the sums match ref.
  for (int64_t C : {int64_t{64}, int64_t{9}}) {
    INFO("C " << C);
    auto ids = random_ids({4096}, 600 + C, 7);
    for (int64_t k = 500; k < 3500; ++k) ids.flat(k) = 3;
    const auto w = Tensor<float>::uniform({7, C}, 601);
    const auto g = Tensor<float>::uniform({4096, C}, 602);
    std::vector<Tensor<float>> runs;
    for (int r = 0; r < 2; ++r) {
      auto wd = Var<float, Cuda>::param(to_dev(w));
      embedding(wd, ids).backward(to_dev(g));
      runs.push_back(to_host(wd.grad()));
    }
    CHECK_MESSAGE(same_bits(runs[0], runs[1]), "two backward runs are bitwise equal");
    auto want = Tensor<double>::zeros({7, C});
    ref::embedding_backward_accumulate(want, ids, g.cast<double>());
    check_close(runs[0], want, kTolF32, "duplicate-id sums vs ref");

    // bf16: f32 accumulation over ~3000 terms, rounded once.
    auto wb = Var<bf16, Cuda>::param(to_dev(w.cast<bf16>()));
    embedding(wb, ids).backward(to_dev(g.cast<bf16>()));
    auto want_b = Tensor<double>::zeros({7, C});
    ref::embedding_backward_accumulate(want_b, ids, g.cast<bf16>().cast<double>());
    check_close(wb.grad(), want_b, kTolBf16, "bf16 duplicate-id sums vs ref (f32 accumulation)");
  }
}

TEST_CASE("cuda:embedding device ids, saved ids, frozen weight, errors") {
  const auto w = Tensor<float>::uniform({11, 8}, 700);
  const auto ids = Tensor<int32_t>::from_vector({2, 3}, {5, 1, 5, 10, 0, 5});
  const auto g = Tensor<float>::uniform({2, 3, 8}, 701);
  auto want = Tensor<double>::zeros({11, 8});
  ref::embedding_backward_accumulate(want, ids, g.cast<double>());

  // Device ids: same result; the op keeps its own copy, so the caller may overwrite its buffer.
  auto ids_d = to_dev(ids);
  auto wd = Var<float, Cuda>::param(to_dev(w));
  auto y = embedding(wd, ids_d);
  check_close(y.value(), ref::embedding(w, ids), kTolF32, "forward with device ids");
  ids_d.fill_(0);
  y.backward(to_dev(g));
  check_close(wd.grad(), want, kTolF32, "backward uses the ids of the forward (device ids)");

  // Host ids: the host buffer may be reused too.
  auto ids_h = ids.clone();
  auto wd2 = Var<float, Cuda>::param(to_dev(w));
  auto y2 = embedding(wd2, ids_h);
  ids_h.fill_(0);
  y2.backward(to_dev(g));
  check_close(wd2.grad(), want, kTolF32, "backward uses the ids of the forward (host ids)");

  // Frozen weight: nothing recorded.
  Var<float, Cuda> frozen(to_dev(w), false);
  CHECK_FALSE(embedding(frozen, ids).requires_grad());

  Var<float, Cuda> wv(to_dev(Tensor<float>::uniform({11, 4}, 702)));
  check_throws_naming<Error>(
      [&] {
        embedding(wv, Tensor<int32_t>::from_vector({3}, {0, -1, 2}));
      },
      {"id -1", "11"}, "negative host id");
  check_throws_naming<Error>(
      [&] {
        embedding(wv, Tensor<int32_t>::from_vector({2, 2}, {0, 1, 2, 11}));
      },
      {"id 11", "11)"}, "host id == V");
  check_throws_naming<Error>(
      [&] {
        embedding(wv, to_dev(Tensor<int32_t>::from_vector({2}, {3, 1 << 30})));
      },
      {"id 1073741824", "11"}, "huge device id");
  check_throws_naming<ShapeError>(
      [&] { embedding(Var<float, Cuda>(to_dev(Tensor<float>::zeros({11}))), Tensor<int32_t>::zeros({2})); }, {"[11]"},
      "weight of rank 1");
}
