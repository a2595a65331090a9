// Embedding: cpu:: against ref:: (forward gather, backward scatter-add with repeated ids), f64 gradcheck,
// frozen weights, determinism, out-of-range ids.
#include "distill/ops/embedding.hpp"

#include <string>
#include <vector>

#include "harness.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace distill;
using distill::test::check_close;
using distill::test::check_grad;
using distill::test::check_throws_naming;
using distill::test::kTolBf16;
using distill::test::kTolF32;

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

}  // namespace

TEST_CASE("op:embedding") {
  struct Case {
    int64_t V, C;
    Shape ids;
  };
  // Odd sizes, ids of rank 1..3, an empty id list, many repeats (V = 5), and a larger parallel case.
  const std::vector<Case> cases{{11, 7, {3, 4}}, {11, 7, {5}},   {6, 1, {2, 2, 3}},
                                {9, 4, {0}},     {5, 13, {200}}, {1000, 33, {64, 50}}};
  uint64_t seed = 400;
  for (const Case& c : cases) {
    const std::string tag = "V " + std::to_string(c.V) + ", C " + std::to_string(c.C) + ", ids " + c.ids.str();
    const auto w = Tensor<float>::uniform({c.V, c.C}, ++seed);
    const auto ids = random_ids(c.ids, ++seed, c.V);
    const auto y = cpu::embedding_forward(w, ids);
    CHECK(y.shape() == with_back(c.ids, c.C));
    check_close(y, ref::embedding(w, ids), kTolF32, "forward " + tag);

    const auto g = Tensor<float>::uniform(y.shape(), ++seed);
    const auto dw0 = Tensor<float>::uniform({c.V, c.C}, ++seed);
    auto got = dw0.clone(), want = dw0.clone();
    cpu::embedding_backward_accumulate(got, ids, g);
    ref::embedding_backward_accumulate(want, ids, g);
    check_close(got, want, kTolF32, "backward accumulates " + tag);
    // Deterministic: a second run gives the same bits.
    auto again = dw0.clone();
    cpu::embedding_backward_accumulate(again, ids, g);
    bool same = true;
    for (int64_t i = 0; i < got.numel(); ++i) same = same && got.flat(i) == again.flat(i);
    CHECK_MESSAGE(same, "backward is bitwise repeatable " << tag);
  }

  // --- the scatter-add does not depend on the thread count ---------------------------------------------
#if defined(_OPENMP)
  {
    const auto ids = random_ids({3000}, 410, 17);
    const auto g = Tensor<float>::uniform({3000, 8}, 411);
    auto one = Tensor<float>::zeros({17, 8}), three = Tensor<float>::zeros({17, 8});
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    cpu::embedding_backward_accumulate(one, ids, g);
    omp_set_num_threads(3);
    cpu::embedding_backward_accumulate(three, ids, g);
    omp_set_num_threads(saved);
    bool same = true;
    for (int64_t i = 0; i < one.numel(); ++i) same = same && one.flat(i) == three.flat(i);
    CHECK_MESSAGE(same, "dw is bitwise identical with 1 and 3 threads");
  }
#endif

  // --- math: a hand-made case, rows copied and repeated ids summed ---------------------------------------
  {
    const auto w = Tensor<float>::from_vector({3, 2}, {1, 2, 3, 4, 5, 6});
    const auto ids = Tensor<int32_t>::from_vector({2, 2}, {2, 0, 2, 2});
    check_close(cpu::embedding_forward(w, ids), Tensor<double>::from_vector({2, 2, 2}, {5, 6, 1, 2, 5, 6, 5, 6}),
                kTolF32, "hand-made forward");
    auto dw = Tensor<float>::zeros({3, 2});
    cpu::embedding_backward_accumulate(dw, ids,
                                       Tensor<float>::from_vector({2, 2, 2}, {1, 10, 100, 1000, 2, 20, 3, 30}));
    check_close(dw, Tensor<double>::from_vector({3, 2}, {100, 1000, 0, 0, 6, 60}), kTolF32, "hand-made backward");
  }

  // --- bf16: the gather is an exact copy; repeated-id sums vs ref in double -------------------------------
  {
    const auto w = Tensor<bf16>::uniform({7, 24}, 420);
    const auto ids = random_ids({40}, 421, 7);
    const auto y = cpu::embedding_forward(w, ids), yr = ref::embedding(w, ids);
    bool exact = true;
    for (int64_t i = 0; i < y.numel(); ++i) exact = exact && bits_of(y.flat(i)) == bits_of(yr.flat(i));
    CHECK_MESSAGE(exact, "bf16 gather is bit-exact");
    const auto g = Tensor<bf16>::uniform(y.shape(), 422);
    auto dw = Tensor<bf16>::zeros({7, 24});
    cpu::embedding_backward_accumulate(dw, ids, g);
    auto want = Tensor<double>::zeros({7, 24});
    ref::embedding_backward_accumulate(want, ids, g.cast<double>());
    check_close(dw, want, kTolBf16, "bf16 backward vs ref in double");
  }

  // --- gradcheck in f64 through the Var op (repeated ids) ---------------------------------------------------
  {
    const auto ids = Tensor<int32_t>::from_vector({2, 3}, {0, 4, 0, 2, 2, 0});
    check_grad([&](const std::vector<Var<double>>& v) { return embedding(v[0], ids); },
               {Tensor<double>::uniform({5, 3}, 430)}, {}, "gradcheck [5, 3] by ids [2, 3]");
    const auto ids1 = Tensor<int32_t>::from_vector({4}, {1, 1, 1, 3});
    check_grad([&](const std::vector<Var<double>>& v) { return embedding(v[0], ids1); },
               {Tensor<double>::uniform({4, 2}, 431)}, {}, "gradcheck [4, 2] by ids [4]");
  }

  // --- Var op: accumulation, frozen weight, ids copied ---------------------------------------------------
  {
    const auto wv = Tensor<float>::uniform({6, 5}, 440);
    auto ids = Tensor<int32_t>::from_vector({3}, {5, 1, 5});
    const auto g = Tensor<float>::uniform({3, 5}, 441), g0 = Tensor<float>::uniform({6, 5}, 442);
    auto w = Var<float>::param(wv);
    w.grad_buffer().copy_from(g0);
    auto y = embedding(w, ids);
    ids.fill_(0);  // the op kept its own copy of the ids
    y.backward(g);
    auto want = g0.clone();
    ref::embedding_backward_accumulate(want, Tensor<int32_t>::from_vector({3}, {5, 1, 5}), g);
    check_close(w.grad(), want, kTolF32, "weight grad accumulates onto the existing buffer");

    Var<float> frozen(wv, false);
    auto z = Var<float>::param(Tensor<float>::uniform({3, 5}, 443));
    Var<float> out = embedding(frozen, ids) * z;
    out.backward(g);
    CHECK(!frozen.grad().defined());
    REQUIRE(z.grad().defined());
    const auto e = ref::embedding(wv, ids);  // d(e * z)/dz = e
    auto dz = Tensor<double>::empty(e.shape());
    for (int64_t i = 0; i < dz.numel(); ++i) dz.flat(i) = double(e.flat(i)) * double(g.flat(i));
    check_close(z.grad(), dz, kTolF32, "gradient still flows to the other input");
  }

  // --- errors --------------------------------------------------------------------------------------------------
  {
    Var<float> w(Tensor<float>::uniform({11, 4}, 450));
    check_throws_naming<Error>(
        [&] {
          embedding(w, Tensor<int32_t>::from_vector({3}, {0, -1, 2}));
        },
        {"id -1", "11"}, "negative id");
    check_throws_naming<Error>(
        [&] {
          embedding(w, Tensor<int32_t>::from_vector({2, 2}, {0, 1, 2, 11}));
        },
        {"id 11", "11)"}, "id == V");
    check_throws_naming<Error>([&] { embedding(w, Tensor<int32_t>::from_vector({1}, {1 << 30})); }, {"id 1073741824"},
                               "huge id");
    check_throws_naming<ShapeError>(
        [&] { embedding(Var<float>(Tensor<float>::zeros({11})), Tensor<int32_t>::zeros({2})); }, {"[11]"},
        "weight of rank 1");
    auto dw = Tensor<float>::zeros({11, 4});
    check_throws_naming<ShapeError>(
        [&] {
          cpu::embedding_backward_accumulate(dw, Tensor<int32_t>::zeros({3}), Tensor<float>::zeros({3, 5}));
        },
        {"[3, 5]", "[3, 4]"}, "gradient of the wrong shape");
  }
}
