// Feature distillation (issue 10): the student's hidden states at some layers learn to predict the teacher's at
// mapped layers, through a learned linear projection from the student's hidden size to the teacher's.
//
//   layer map      student layer s -> teacher layer floor((s + 1) * L_T / L_S) - 1 (proportional: the last layer
//                  maps to the last, layers spread evenly), or given as "s:t,s:t" (parse_layer_map).
//   projection     proj = h_S W^T + b, W [C_T, C_S] (uniform +-1/sqrt(C_S) from a seed, like torch.nn.Linear's
//                  default init of the weight), b [C_T] zero; trained with the LoRA weights; saved beside the
//                  adapter as feature_projections.safetensors ("layers.<s>.weight" / ".bias", f32) and reloaded on
//                  resume (save_projections / load_projections).
//   losses         mse:    mean over the teacher's features of (proj - h_T)^2
//                  cosine: 1 - proj . h_T / (|proj| |h_T|)          (torch.nn.functional.cosine_similarity)
//                  both averaged over valid positions (or divided by the caller's global count).
// Positions are aligned by the caller: the same positions for a same-tokenizer pair, uld_align's pairs otherwise.
// tools/golden/kd.py checks the values and the gradients (hidden, W, b) against PyTorch autograd.
#pragma once
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/train/kd.hpp"

namespace distill::train {

inline std::vector<int64_t> proportional_layer_map(int64_t student_layers, int64_t teacher_layers) {
  DISTILL_CHECK(student_layers > 0 && teacher_layers > 0, "layer map: layer counts must be positive, got ",
                student_layers, " and ", teacher_layers);
  std::vector<int64_t> m(static_cast<size_t>(student_layers));
  for (int64_t s = 0; s < student_layers; ++s)
    m[static_cast<size_t>(s)] = (s + 1) * teacher_layers / student_layers - 1;
  return m;
}

// "s:t,s:t,..." -> {s: t}; every layer in range, each student layer once.
inline std::map<int64_t, int64_t> parse_layer_map(const std::string& text, int64_t student_layers,
                                                  int64_t teacher_layers) {
  std::map<int64_t, int64_t> m;
  size_t i = 0;
  while (i < text.size()) {
    const size_t comma = text.find(',', i);
    const std::string item = text.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
    const size_t colon = item.find(':');
    int64_t s = -1, t = -1;
    try {
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      size_t p1 = 0, p2 = 0;
      s = std::stoll(item.substr(0, colon), &p1);
      t = std::stoll(item.substr(colon + 1), &p2);
      if (p1 != colon || p2 != item.size() - colon - 1) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      throw Error("layer map: \"" + item + "\" is not student:teacher (e.g. 25:35)");
    }
    DISTILL_CHECK(s >= 0 && s < student_layers, "layer map: student layer ", s, " is outside 0..", student_layers - 1);
    DISTILL_CHECK(t >= 0 && t < teacher_layers, "layer map: teacher layer ", t, " is outside 0..", teacher_layers - 1);
    DISTILL_CHECK(m.emplace(s, t).second, "layer map: student layer ", s, " is mapped twice");
    if (comma == std::string::npos) break;
    i = comma + 1;
  }
  DISTILL_CHECK(!m.empty(), "layer map: empty");
  return m;
}

enum class FeatureLoss : uint8_t { Mse, Cosine };
inline FeatureLoss parse_feature_loss(const std::string& s) {
  if (s == "mse") return FeatureLoss::Mse;
  if (s == "cosine") return FeatureLoss::Cosine;
  throw Error("unknown feature loss \"" + s + "\"; expected mse or cosine");
}

// One learned projection per mapped student layer.
struct FeatureProjection {
  Var<float> weight;  // [C_T, C_S]
  Var<float> bias;    // [C_T]
  static FeatureProjection init(int64_t student_hidden, int64_t teacher_hidden, uint64_t seed) {
    const double a = 1.0 / std::sqrt(static_cast<double>(student_hidden));
    return {Var<float>::param(Tensor<float>::uniform({teacher_hidden, student_hidden}, seed, -a, a)),
            Var<float>::param(Tensor<float>::zeros({teacher_hidden}))};
  }
};

inline void save_projections(const std::map<int64_t, FeatureProjection>& p, const std::string& path) {
  io::SafetensorsWriter w;
  for (const auto& [s, fp] : p) {
    w.add("layers." + std::to_string(s) + ".weight", fp.weight.value());
    w.add("layers." + std::to_string(s) + ".bias", fp.bias.value());
  }
  w.save(path);
}

// Loads into existing projections (same layers and shapes, else an error naming the tensor).
inline void load_projections(std::map<int64_t, FeatureProjection>& p, const std::string& path) {
  const auto f = io::SafetensorsFile::open(path);
  DISTILL_CHECK(static_cast<int64_t>(f.tensors().size()) == 2 * static_cast<int64_t>(p.size()), path, ": holds ",
                f.tensors().size(), " tensors for ", p.size(), " projected layers");
  for (auto& [s, fp] : p)
    for (auto* v : {&fp.weight, &fp.bias}) {
      const std::string name = "layers." + std::to_string(s) + (v == &fp.weight ? ".weight" : ".bias");
      DISTILL_CHECK(f.find(name) != nullptr, path, ": missing ", name);
      const Tensor<float> t = f.load<float>(name);
      DISTILL_CHECK(t.shape() == v->value().shape(), path, ": ", name, " has shape ", t.shape().str(), ", expected ",
                    v->value().shape().str());
      v->value().copy_from(t);
    }
}

// h_student [N, C_S] (Var), teacher [N, C_T] (constant), valid [N] or undefined -> rank-0 Var; gradients to
// h_student, proj.weight and proj.bias (whichever require grad).
inline Var<float> feature_loss(const Var<float>& h, const FeatureProjection& proj, const Tensor<float>& teacher,
                               const Tensor<int32_t>& valid, FeatureLoss kind, double norm = 0) {
  const Shape& hs = h.value().shape();
  const Shape& ws = proj.weight.value().shape();
  DISTILL_CHECK(hs.rank() == 2 && ws.rank() == 2 && ws[1] == hs[1] && teacher.shape() == Shape({hs[0], ws[0]}) &&
                    proj.bias.value().shape() == Shape({ws[0]}),
                "feature_loss: student hidden ", hs.str(), ", projection ", ws.str(), " + ",
                proj.bias.value().shape().str(), " and teacher hidden ", teacher.shape().str(), " do not fit");
  const int64_t N = hs[0], C = hs[1], CT = ws[0];
  const auto ok = std::make_shared<const std::vector<uint8_t>>(detail_kd::valid_rows(valid, N, "feature_loss"));
  const double nrm = detail_kd::norm_of(norm, *ok);
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Tensor<float> hv = h.value().contiguous(), wv = proj.weight.value().contiguous(),
                      bv = proj.bias.value().contiguous(), tv = teacher.contiguous();
  Mat P = Eigen::Map<const Mat>(hv.data(), N, C) * Eigen::Map<const Mat>(wv.data(), CT, C).transpose();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < CT; ++j) P(i, j) += bv.data()[j];
  // Per valid row: the loss and d(loss)/d(proj row) (before the upstream gradient and 1/norm).
  auto dP = std::make_shared<Mat>(Mat::Zero(N, CT));
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (!(*ok)[static_cast<size_t>(i)]) continue;
    const float* t = tv.data() + i * CT;
    if (kind == FeatureLoss::Mse) {
      double r = 0;
      for (int64_t j = 0; j < CT; ++j) {
        const double e = static_cast<double>(P(i, j)) - t[j];
        r += e * e;
        (*dP)(i, j) = static_cast<float>(2.0 * e / static_cast<double>(CT));
      }
      sum += r / static_cast<double>(CT);
    } else {
      double pt = 0, pp = 0, tt = 0;
      for (int64_t j = 0; j < CT; ++j) {
        pt += static_cast<double>(P(i, j)) * t[j];
        pp += static_cast<double>(P(i, j)) * P(i, j);
        tt += static_cast<double>(t[j]) * t[j];
      }
      const double np = std::max(std::sqrt(pp), 1e-8), nt = std::max(std::sqrt(tt), 1e-8), cos = pt / (np * nt);
      sum += 1.0 - cos;
      for (int64_t j = 0; j < CT; ++j)  // d(1 - cos)/dp = -(t / (|p||t|) - cos p / |p|^2)
        (*dP)(i, j) = static_cast<float>(-(t[j] / (np * nt) - cos * P(i, j) / (np * np)));
    }
  }
  const double loss = nrm > 0 ? sum / nrm : 0.0;
  const Var<float> w = proj.weight, b = proj.bias;
  return Var<float>::record("feature_loss", Tensor<float>::full(Shape(), static_cast<float>(loss)),
                            {h.node(), w.node(), b.node()}, [h, w, b, dP, nrm, N, C, CT](auto& self) {
                              if (nrm <= 0) return;
                              const float g = static_cast<float>(detail_kd::grad_scalar(self.grad) / nrm);
                              const Mat G = *dP * g;
                              if (h.requires_grad()) {
                                const Tensor<float> wv = w.value().contiguous();
                                Eigen::Map<Mat>(h.grad_buffer().data(), N, C).noalias() +=
                                    G * Eigen::Map<const Mat>(wv.data(), CT, C);
                              }
                              if (w.requires_grad()) {
                                const Tensor<float> hv = h.value().contiguous();
                                Eigen::Map<Mat>(w.grad_buffer().data(), CT, C).noalias() +=
                                    G.transpose() * Eigen::Map<const Mat>(hv.data(), N, C);
                              }
                              if (b.requires_grad()) {
                                float* db = b.grad_buffer().data();
                                for (int64_t j = 0; j < CT; ++j) db[j] += G.col(j).sum();
                              }
                            });
}

}  // namespace distill::train
