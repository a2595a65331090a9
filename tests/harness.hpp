// The backend-consistency + gradient-check harness shared by every op test (after ggml's
// test-backend-ops). One TEST_CASE per op: the fast path against ref:: with a named per-dtype tolerance
// (atol + rtol*|ref|, printing max abs/rel error), and gradients against central finite differences in f64.
// CUDA cases come with the CUDA backend and are skipped, saying so, when no GPU is usable.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "distill/autograd.hpp"

namespace distill::test {

struct Tol {
  double atol, rtol;
  const char* name;
};
// Named tolerances per dtype (used everywhere; never sprinkle literals).
inline constexpr Tol kTolF64{1e-10, 1e-9, "f64"};
inline constexpr Tol kTolF32{1e-5, 1e-4, "f32"};
inline constexpr Tol kTolF16{2e-3, 2e-3, "f16"};
inline constexpr Tol kTolBf16{1.6e-2, 1.6e-2, "bf16"};
// Gradient checks: f64 finite differences with eps = 1e-6.
inline constexpr Tol kTolGrad{1e-6, 1e-5, "gradcheck-f64"};

template <class T>
constexpr Tol tol_for() {
  if constexpr (std::is_same_v<T, double>)
    return kTolF64;
  else if constexpr (std::is_same_v<T, float>)
    return kTolF32;
  else if constexpr (std::is_same_v<T, f16>)
    return kTolF16;
  else
    return kTolBf16;
}

// DISTILL_TEST_VERBOSE=1 prints every comparison's max error, not only failures.
inline bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("DISTILL_TEST_VERBOSE");
    return e && *e && *e != '0';
  }();
  return v;
}

struct CloseReport {
  bool ok = true;
  double max_abs = 0, max_rel = 0;
  int64_t worst = -1;
};

template <class T, class U>
CloseReport compare(const Tensor<T>& got, const Tensor<U>& ref, Tol tol) {
  CloseReport r;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double g = static_cast<double>(to_compute<T>(got.flat(i)));
    const double e = static_cast<double>(to_compute<U>(ref.flat(i)));
    const double a = std::abs(g - e);
    const bool both_nan = std::isnan(g) && std::isnan(e);
    const bool same_inf = std::isinf(g) && std::isinf(e) && (g > 0) == (e > 0);
    if (both_nan || same_inf) continue;
    r.max_abs = std::max(r.max_abs, a);
    if (a > tol.atol) r.max_rel = std::max(r.max_rel, a / std::max(std::abs(e), 1e-30));
    if (!(a <= tol.atol + tol.rtol * std::abs(e)) && r.ok) {
      r.ok = false;
      r.worst = i;
    }
  }
  return r;
}

// CHECKs that `got` matches `ref` within `tol`; prints max errors on failure (and with -s).
template <class T, class U>
void check_close(const Tensor<T>& got, const Tensor<U>& ref, Tol tol, const std::string& what) {
  INFO(what);
  REQUIRE_MESSAGE(got.shape() == ref.shape(), "shape " << got.shape().str() << " vs reference " << ref.shape().str());
  const CloseReport r = compare(got, ref, tol);
  INFO("tolerance " << std::string(tol.name) << " (atol " << tol.atol << ", rtol " << tol.rtol << "): max abs err "
                    << r.max_abs << ", max rel err " << r.max_rel);
  if (!r.ok)
    INFO("first failure at flat index " << r.worst << ": got " << static_cast<double>(to_compute<T>(got.flat(r.worst)))
                                        << ", reference " << static_cast<double>(to_compute<U>(ref.flat(r.worst))));
  CHECK(r.ok);
  if (verbose()) MESSAGE(what << ": max abs err " << r.max_abs << " (" << std::string(tol.name) << ")");
}

// Gradient check of f (vector<Var<double>> -> Var<double>) against central differences.
template <class F>
void check_grad(F f, const std::vector<Tensor<double>>& inputs, std::vector<bool> wrt = {},
                const std::string& what = "gradcheck", Tol tol = kTolGrad) {
  autograd::GradcheckOptions opt;
  opt.atol = tol.atol;
  opt.rtol = tol.rtol;
  const auto rep = autograd::gradcheck(f, inputs, std::move(wrt), opt);
  INFO(what << ": " << rep.checked << " elements checked, max abs err " << rep.max_abs_err << "; "
            << rep.first_failure);
  CHECK(rep.checked > 0);
  CHECK(rep.ok);
}

// a + b by plain loops in double (the expected result of an accumulating backward).
template <class T>
Tensor<T> plus(const Tensor<T>& a, const Tensor<T>& b) {
  auto out = Tensor<T>::empty(a.shape());
  for (int64_t i = 0; i < a.numel(); ++i)
    out.flat(i) = static_cast<T>(static_cast<double>(a.flat(i)) + static_cast<double>(b.flat(i)));
  return out;
}

// Runs fn and returns the message of the E it must throw (a failed CHECK when it does not).
template <class E, class F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("expected an exception");
  return "";
}
template <class F>
std::string shape_error_of(F fn) {
  return error_of<ShapeError>(fn);
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// True when a and b have the same shape and the same bits at every element (views allowed; NaNs compare by
// their bits). The bitwise-determinism and "same bits as the CPU" checks use it.
template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(&a.flat(i), &b.flat(i), sizeof(T)) != 0) return false;
  return true;
}

// Number of elements whose bf16 bit patterns differ.
inline int64_t bit_mismatches(const Tensor<bf16>& a, const Tensor<bf16>& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) n += bits_of(a.flat(i)) != bits_of(b.flat(i));
  return n;
}

// CHECKs that f() throws E and that the message names every one of `parts` (shapes, ids, values).
template <class E, class F>
void check_throws_naming(F&& f, const std::vector<std::string>& parts, const std::string& what) {
  INFO(what);
  bool thrown = false;
  try {
    f();
  } catch (const E& e) {
    thrown = true;
    const std::string m = e.what();
    for (const auto& p : parts) {
      INFO("message '" << m << "' should name '" << p << "'");
      CHECK(m.find(p) != std::string::npos);
    }
  }
  CHECK(thrown);
}

}  // namespace distill::test
