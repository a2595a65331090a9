// Ops against a frozen external oracle: fixtures exported from PyTorch and Hugging Face transformers'
// own modules (Qwen3RMSNorm, Gemma3RMSNorm, apply_rotary_pos_emb, F.scaled_dot_product_attention,
// F.cross_entropy, ...) by tools/export_op_fixtures.py, forward and backward, in float64. Each op runs
// here in f64 (tight tolerance) and f32 (kTolF32 against the f64 reference).
#include <distill/distill.hpp>

#include "golden.hpp"
#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {
// Runs f on the fixture's inputs (as Var<T> requiring grad), seeds backward with g, and checks the
// output and each input gradient against the fixture.
template <class T, class F>
void check_case(const Golden& gd, const std::vector<std::string>& in, const std::string& out,
                const std::vector<std::string>& grads, F f, Tol tol, const std::string& what) {
  std::vector<Var<T>> vars;
  for (const auto& n : in) vars.push_back(Var<T>::param(as<T>(gd.at(n))));
  Var<T> y = f(vars);
  check_close(y.value(), gd.at(out), tol, what + " forward");
  if (gd.count("g")) {
    y.backward(as<T>(gd.at("g")));
  } else {
    y.backward();
  }
  for (size_t i = 0; i < grads.size(); ++i)
    if (!grads[i].empty()) check_close(vars[i].grad(), gd.at(grads[i]), tol, what + " d" + in[i]);
}

template <class F>
void both(const Golden& gd, const std::vector<std::string>& in, const std::string& out,
          const std::vector<std::string>& grads, F f, const std::string& what,
          Tol tol64 = Tol{1e-9, 1e-8, "f64-vs-torch"}) {
  check_case<double>(gd, in, out, grads, f, tol64, what + " f64");
  check_case<float>(gd, in, out, grads, f, kTolF32, what + " f32");
}
}  // namespace

TEST_CASE("golden: element-wise activations vs torch") {
  both(
      load_golden("gelu_tanh"), {"x"}, "y", {"dx"}, [](const auto& v) { return to_var(gelu_tanh(v[0])); }, "gelu_tanh");
  both(
      load_golden("silu"), {"x"}, "y", {"dx"}, [](const auto& v) { return to_var(silu(v[0])); }, "silu");
  both(
      load_golden("sigmoid"), {"x"}, "y", {"dx"}, [](const auto& v) { return to_var(sigmoid(v[0])); }, "sigmoid");
  both(
      load_golden("tanh"), {"x"}, "y", {"dx"}, [](const auto& v) { return to_var(tanh(v[0])); }, "tanh");
}

TEST_CASE("golden: RMSNorm vs transformers' Qwen3RMSNorm and Gemma3RMSNorm") {
  // Both HF modules upcast to float32 inside, even for float64 inputs, so the fixture itself carries
  // float32 precision: compare our f64 at the f32 tolerance.
  both(
      load_golden("rms_norm_qwen3"), {"x", "w"}, "y", {"dx", "dw"},
      [](const auto& v) { return rms_norm(v[0], v[1], 1e-6, RmsNormStyle::Weight); }, "Qwen3RMSNorm", kTolF32);
  both(
      load_golden("rms_norm_gemma3"), {"x", "w"}, "y", {"dx", "dw"},
      [](const auto& v) { return rms_norm(v[0], v[1], 1e-6, RmsNormStyle::OnePlusWeight); }, "Gemma3RMSNorm", kTolF32);
}

TEST_CASE("golden: RoPE vs transformers' apply_rotary_pos_emb") {
  const auto gd = load_golden("rope");
  const auto pos = as_ids(gd.at("positions"));
  // cos/sin are float32 in both (HF computes the angles in float32), so f64 agrees to float precision.
  both(
      gd, {"x"}, "y", {"dx"}, [&](const auto& v) { return rope(v[0], pos, RopeConfig{10000.0}); }, "rope",
      Tol{1e-6, 1e-6, "f64-vs-torch (f32 angles)"});
}

TEST_CASE("golden: softmax, log_softmax and cross-entropy vs torch") {
  both(
      load_golden("softmax"), {"x"}, "y", {"dx"}, [](const auto& v) { return softmax(v[0]); }, "softmax");
  both(
      load_golden("log_softmax"), {"x"}, "y", {"dx"}, [](const auto& v) { return log_softmax(v[0]); }, "log_softmax");
  const auto gd = load_golden("cross_entropy");
  const auto targets = as_ids(gd.at("targets"));
  both(
      gd, {"logits"}, "loss", {"dlogits"},
      [&](const auto& v) { return reshape(cross_entropy(v[0], targets, -100), Shape{1}); }, "cross_entropy");
}

TEST_CASE("golden: attention vs torch scaled_dot_product_attention") {
  for (const char* name :
       {"attention_causal_gqa", "attention_window", "attention_decode_offset", "attention_noncausal"}) {
    const auto gd = load_golden(name);
    AttentionOptions opts;
    opts.causal = gd.at("meta").data()[0] != 0;
    opts.window = static_cast<int64_t>(gd.at("meta").data()[1]);
    both(
        gd, {"q", "k", "v"}, "out", {"dq", "dk", "dv"},
        [&](const auto& v) { return attention(v[0], v[1], v[2], opts); }, name);
  }
}
