// LoRA adapters on a Transformer, in PEFT's file format (SPEC §7):
//   attach_lora(model, cfg)         a fresh adapter on every targeted projection (PEFT's init distributions)
//   lora_parameters(model)          the trainable Vars, in a fixed order (layer, q k v o gate up down, A then B)
//   save_peft_adapter(model, ...)   adapter_model.safetensors (f32, metadata {"format": "pt"}) + adapter_config.json
//   load_peft_adapter(model, dir)   attaches the adapters a PEFT directory describes, strictly: every tensor must
//                                   belong to a targeted projection with the right shape, every targeted projection
//                                   must have both tensors
//   merge_lora(model)               W <- W + scaling·(B·A) for dense bases (PEFT's merge_and_unload), adapters dropped
// Tensor names: "base_model.model." + the Hugging Face parameter path with "weight" replaced by
// "lora_A.weight" / "lora_B.weight" (PEFT drops the adapter name ".default" when saving).
#pragma once
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "distill/io/file.hpp"
#include "distill/io/peft.hpp"
#include "distill/models/transformer.hpp"

namespace distill::models {

inline constexpr Role kProjectionRoles[] = {Role::Q, Role::K, Role::V, Role::O, Role::Gate, Role::Up, Role::Down};

// "model.layers.3.self_attn.q_proj" (the module PEFT matches targets against).
inline std::string module_name(Family f, const std::string& prefix, int64_t layer, Role r) {
  std::string n = prefix + "layers." + std::to_string(layer) + "." + hf_name(f, r);
  return n.substr(0, n.size() - 7);  // drop ".weight"
}

inline nn::LoraConfig lora_config_from_peft(const io::PeftLoraConfig& p) {
  nn::LoraConfig c;
  c.r = p.r;
  c.alpha = p.lora_alpha;
  c.rslora = p.use_rslora;
  c.dropout = p.lora_dropout;
  c.targets = p.target_modules;
  c.init = p.init_lora_weights == "gaussian" ? "gaussian" : "default";
  return c;
}

inline io::PeftLoraConfig peft_from_lora_config(const nn::LoraConfig& c, std::string base_model) {
  io::PeftLoraConfig p;
  p.base_model_name_or_path = std::move(base_model);
  p.r = c.r;
  p.lora_alpha = c.alpha;
  p.lora_dropout = c.dropout;
  p.use_rslora = c.rslora;
  p.target_modules = c.targets;
  p.init_lora_weights = c.init == "gaussian" ? "gaussian" : "true";
  return p;
}

// Adds a fresh adapter to every targeted projection (replacing any there); returns how many.
template <TransformerSpec Spec, class T, class D>
int64_t attach_lora(Transformer<Spec, T, D>& model, const nn::LoraConfig& cfg) {
  cfg.validate();
  auto& w = model.mutable_weights();
  int64_t n = 0;
  for (int64_t l = 0; l < model.dims().layers; ++l)
    for (Role r : kProjectionRoles) {
      if (!cfg.targets_module(module_name(Spec.family, w.prefix, l, r))) continue;
      nn::Linear<T, D>& p = w.blocks[static_cast<size_t>(l)].proj(r);
      const uint64_t seed = nn::derive_seed(cfg.seed, static_cast<uint64_t>(l * 16 + static_cast<int64_t>(r)));
      p.lora =
          std::make_shared<nn::LoraAdapter<D>>(nn::LoraAdapter<D>::make(p.in_features(), p.out_features(), cfg, seed));
      ++n;
    }
  DISTILL_CHECK(n > 0, "LoRA: no projection of the model matches the target modules");
  return n;
}

// Removes every adapter.
template <TransformerSpec Spec, class T, class D>
void detach_lora(Transformer<Spec, T, D>& model) {
  for (auto& b : model.mutable_weights().blocks)
    for (Role r : kProjectionRoles) b.proj(r).lora.reset();
}

// (name, Var) of every adapter tensor in the fixed order.
template <TransformerSpec Spec, class T, class D>
std::vector<std::pair<std::string, Var<float, D>>> named_lora_parameters(const Transformer<Spec, T, D>& model) {
  std::vector<std::pair<std::string, Var<float, D>>> out;
  const auto& w = model.weights();
  for (int64_t l = 0; l < model.dims().layers; ++l)
    for (Role r : kProjectionRoles) {
      const auto& p = w.blocks[static_cast<size_t>(l)].proj(r);
      if (!p.lora) continue;
      const std::string base = "base_model.model." + module_name(Spec.family, w.prefix, l, r);
      out.emplace_back(base + ".lora_A.weight", p.lora->A);
      out.emplace_back(base + ".lora_B.weight", p.lora->B);
    }
  return out;
}

template <TransformerSpec Spec, class T, class D>
std::vector<Var<float, D>> lora_parameters(const Transformer<Spec, T, D>& model) {
  std::vector<Var<float, D>> v;
  for (auto& [n, p] : named_lora_parameters(model)) v.push_back(p);
  return v;
}

// Writes adapter_model.safetensors and adapter_config.json into `dir` (created if needed; each file atomic).
template <TransformerSpec Spec, class T, class D>
void save_peft_adapter(const Transformer<Spec, T, D>& model, const nn::LoraConfig& cfg, const std::string& dir,
                       const std::string& base_model) {
  std::filesystem::create_directories(dir);
  io::SafetensorsWriter wr;
  for (auto& [name, v] : named_lora_parameters(model)) wr.add(name, v.value().template to<Cpu>());
  wr.set_metadata("format", "pt");
  wr.save((std::filesystem::path(dir) / "adapter_model.safetensors").string());
  io::atomic_write((std::filesystem::path(dir) / "adapter_config.json").string(),
                   io::peft_config_json(peft_from_lora_config(cfg, base_model)).dump(2));
}

inline io::PeftLoraConfig read_peft_config(const std::string& dir) {
  const auto path = (std::filesystem::path(dir) / "adapter_config.json").string();
  if (!std::filesystem::exists(path)) throw Error(path + ": cannot open (not a PEFT adapter directory?)");
  return io::parse_peft_config(io::read_json_file(path), path);
}

// Attaches the adapters of a PEFT directory; returns their config.
template <TransformerSpec Spec, class T, class D>
nn::LoraConfig load_peft_adapter(Transformer<Spec, T, D>& model, const std::string& dir) {
  nn::LoraConfig cfg = lora_config_from_peft(read_peft_config(dir));
  try {
    cfg.validate();
  } catch (const Error& e) {
    throw Error(dir + "/adapter_config.json: " + e.what());
  }
  const std::string st = (std::filesystem::path(dir) / "adapter_model.safetensors").string();
  if (!std::filesystem::exists(st))
    throw Error(st + ": missing (only safetensors adapters are read; convert adapter_model.bin with PEFT)");
  const io::SafetensorsFile f = io::SafetensorsFile::open(st);
  auto& w = model.mutable_weights();
  std::set<std::string> used;
  int64_t n = 0;
  for (int64_t l = 0; l < model.dims().layers; ++l)
    for (Role r : kProjectionRoles) {
      const std::string mod = module_name(Spec.family, w.prefix, l, r);
      nn::Linear<T, D>& p = w.blocks[static_cast<size_t>(l)].proj(r);
      const std::string a = "base_model.model." + mod + ".lora_A.weight",
                        b = "base_model.model." + mod + ".lora_B.weight";
      const bool has_a = f.find(a) != nullptr, has_b = f.find(b) != nullptr;
      if (!cfg.targets_module(mod)) {
        if (has_a || has_b) throw Error(st + ": holds " + (has_a ? a : b) + " but " + mod + " is not a target module");
        continue;
      }
      if (!has_a || !has_b) throw Error(st + ": missing " + (has_a ? b : a) + " (target module " + mod + ")");
      auto check = [&](const std::string& name, const Shape& want) {
        const auto& info = f.info(name);
        const Shape got = Shape::from_range(info.shape.begin(), info.shape.end());
        if (got != want)
          throw Error(st + ": " + name + " has shape " + got.str() + ", expected " + want.str() +
                      " (r = " + std::to_string(cfg.r) + ", projection " + p.shape().str() + ")");
        used.insert(name);
        Tensor<float> t = f.template load<float>(name);
        if constexpr (std::is_same_v<D, Cpu>)
          return Var<float, D>::param(t);
        else
          return Var<float, D>::param(t.template to<D>());
      };
      auto ad = std::make_shared<nn::LoraAdapter<D>>();
      ad->A = check(a, {cfg.r, p.in_features()});
      ad->B = check(b, {p.out_features(), cfg.r});
      ad->scaling = cfg.scaling();
      ad->dropout = cfg.dropout;
      p.lora = ad;
      ++n;
    }
  for (const auto& t : f.tensors())
    if (!used.count(t.name))
      throw Error(st + ": unexpected tensor " + t.name + " (not a LoRA weight of this " + family_name(Spec.family) +
                  " model's target modules)");
  DISTILL_CHECK(n > 0, st, ": no projection of the model matches the adapter's target modules");
  return cfg;
}

// The merged weight of one projection in f32: W (dequantized when 4-bit) + scaling·(B·A).
template <class T, class D>
Tensor<float> merged_weight(const nn::Linear<T, D>& p) {
  Tensor<float> w = p.dense_weight().template to<Cpu>().template cast<float>();
  if (p.lora) {
    const Tensor<float> dw = p.lora->delta_weight();
    for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] += dw.data()[i];
  }
  return w;
}

}  // namespace distill::models
