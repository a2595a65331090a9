// Tensor: shapes, strides, views (slice, transpose, reshape), copies, and clear shape errors.
#include <doctest/doctest.h>

#include <string>

#include "distill/tensor/tensor.hpp"

using namespace distill;

TEST_CASE("tensor: contiguous layout and element access") {
  auto t = Tensor<float>::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.strides() == Shape{3, 1});
  CHECK(t.numel() == 6);
  CHECK(t.is_contiguous());
  CHECK(t(1, 2) == 5);
  CHECK(t.dim(-1) == 3);
  CHECK(reinterpret_cast<uintptr_t>(t.data()) % kHostAlignment == 0);
}

TEST_CASE("tensor: views share storage") {
  auto t = Tensor<float>::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
  auto tt = t.transpose(0, 1);  // [3, 2]
  CHECK(tt.shape() == Shape{3, 2});
  CHECK_FALSE(tt.is_contiguous());
  CHECK(tt(2, 1) == 5);
  CHECK(tt.to_vector() == std::vector<float>{0, 3, 1, 4, 2, 5});
  auto s = t.slice(1, 1, 3);  // [2, 2]: columns 1..2
  CHECK(s.to_vector() == std::vector<float>{1, 2, 4, 5});
  s(0, 0) = 42;
  CHECK(t(0, 1) == 42);  // writes through
  auto r = t.reshape({3, -1});
  CHECK(r.shape() == Shape{3, 2});
  CHECK(r.storage() == t.storage());
  auto c = tt.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.storage() != t.storage());
  CHECK(c.to_vector() == tt.to_vector());
}

TEST_CASE("tensor: errors name the shapes") {
  auto t = Tensor<float>::zeros({2, 3});
  CHECK_THROWS_AS(t.reshape({4, 2}), ShapeError);
  try {
    (void)t.reshape({4, 2});
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    CHECK(m.find("[2, 3]") != std::string::npos);
    CHECK(m.find("[4, 2]") != std::string::npos);
  }
  CHECK_THROWS_AS(t.transpose(0, 1).reshape({6}), Error);  // non-contiguous reshape
  CHECK_THROWS_AS(t.slice(0, 1, 5), Error);
  CHECK_THROWS_AS(t.dim(2), Error);
  try {
    (void)broadcast_shapes(Shape{2, 3}, Shape{4, 3}, "add");
    FAIL("expected a ShapeError");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "add: shapes [2, 3] and [4, 3] do not broadcast");
  }
  CHECK(broadcast_shapes(Shape{2, 1, 3}, Shape{4, 1}, "x") == Shape{2, 4, 3});
  auto a = Tensor<float>::zeros({2, 3});
  CHECK_THROWS_AS(a.copy_from(Tensor<float>::zeros({3, 2})), ShapeError);
}

TEST_CASE("tensor: clone, fill and zero") {
  auto t = Tensor<double>::full({4}, 2.5);
  auto c = t.clone();
  t.zero_();
  CHECK(c.to_vector() == std::vector<double>(4, 2.5));
  CHECK(t.to_vector() == std::vector<double>(4, 0.0));
  auto u = Tensor<float>::uniform({1000}, 3, -1, 1);
  float mn = 1, mx = -1;
  for (float v : u.to_vector()) mn = std::min(mn, v), mx = std::max(mx, v);
  CHECK(mn >= -1.f);
  CHECK(mx < 1.f);
  CHECK(mx - mn > 1.9f);
  auto ids = Tensor<int32_t>::zeros({3});
  CHECK(ids.to_vector() == std::vector<int32_t>{0, 0, 0});
}
