// Gradient checks against central finite differences in f64.
// L = sum(f(x) * R) for a fixed random R; the analytic dL/dx comes from backward(R), the numeric one from
// (L(x + eps) - L(x - eps)) / (2 eps) per element. Passes when |a - n| <= atol + rtol * |n| everywhere.
#pragma once
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"

namespace distill::autograd {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  uint64_t seed = 1234;
};

struct GradcheckReport {
  bool ok = true;
  double max_abs_err = 0;
  double max_rel_err = 0;
  std::string first_failure;  // "input i, element k: analytic a vs numeric n"
  int64_t checked = 0;
};

// f maps the input Vars to one output Var. `wrt[i]` says whether input i is differentiated (defaults:
// all); the others are passed as frozen Vars.
template <class F>
GradcheckReport gradcheck(F f, const std::vector<Tensor<double>>& inputs, std::vector<bool> wrt = {},
                          GradcheckOptions opt = {}) {
  if (wrt.empty()) wrt.assign(inputs.size(), true);
  DISTILL_CHECK(wrt.size() == inputs.size(), "gradcheck: ", wrt.size(), " wrt flags for ", inputs.size(), " inputs");
  std::vector<Var<double>> vars;
  for (size_t i = 0; i < inputs.size(); ++i) vars.emplace_back(inputs[i].clone(), static_cast<bool>(wrt[i]));
  Var<double> out = f(vars);
  const auto R = Tensor<double>::uniform(out.shape(), opt.seed, -1.0, 1.0);
  out.backward(R);

  auto loss = [&]() {
    NoGradGuard ng;
    Var<double> o = f(vars);
    check_same_shape(o.shape(), R.shape(), "gradcheck");
    double s = 0;
    for (int64_t k = 0; k < R.numel(); ++k) s += o.value().data()[k] * R.data()[k];
    return s;
  };

  GradcheckReport rep;
  for (size_t i = 0; i < vars.size(); ++i) {
    if (!wrt[i]) continue;
    const Tensor<double>& x = vars[i].value();
    const Tensor<double> ga = vars[i].grad().defined() ? vars[i].grad() : Tensor<double>::zeros(x.shape());
    for (int64_t k = 0; k < x.numel(); ++k) {
      const double orig = x.data()[k];
      x.data()[k] = orig + opt.eps;
      const double lp = loss();
      x.data()[k] = orig - opt.eps;
      const double lm = loss();
      x.data()[k] = orig;
      const double num = (lp - lm) / (2 * opt.eps), ana = ga.data()[k];
      const double abs_err = std::abs(ana - num), rel_err = abs_err / std::max(std::abs(num), 1e-12);
      ++rep.checked;
      if (abs_err > rep.max_abs_err) rep.max_abs_err = abs_err;
      if (abs_err > opt.atol && rel_err > rep.max_rel_err) rep.max_rel_err = rel_err;
      if (abs_err > opt.atol + opt.rtol * std::abs(num) && rep.ok) {
        rep.ok = false;
        std::ostringstream os;
        os << "input " << i << " " << x.shape().str() << ", element " << k << ": analytic " << ana << " vs numeric "
           << num;
        rep.first_failure = os.str();
      }
    }
  }
  return rep;
}

}  // namespace distill::autograd
