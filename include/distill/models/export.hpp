// Whole-checkpoint conversions that keep Hugging Face's layout:
//   quantize_checkpoint(src, out)      a bf16/f16/f32 checkpoint -> a bitsandbytes 4-bit one (every block
//                                      projection NF4/FP4 with the .absmax/.quant_map/.nested_*/.quant_state keys;
//                                      embeddings, norms and lm_head as they were; config.json gains
//                                      "quantization_config") that transformers loads with bitsandbytes
//   export_merged(model, src, out)     the model's projections with their adapters merged, everything else from
//                                      src, all in bf16, without "quantization_config": a plain checkpoint
// Both copy the other files of src (tokenizer, generation_config.json, chat template) and write model.safetensors
// atomically. The output directory must not be the source.
#pragma once
#include <filesystem>
#include <regex>
#include <string>

#include "distill/models/adapter.hpp"

namespace distill::models {

namespace detail {

inline void prepare_out_dir(const std::string& src, const std::string& out) {
  namespace fs = std::filesystem;
  DISTILL_CHECK(fs::is_directory(src), src, ": not a checkpoint directory");
  fs::create_directories(out);
  DISTILL_CHECK(!fs::equivalent(fs::path(src), fs::path(out)), "the output directory ", out,
                " is the source checkpoint; choose another");
}

// Every regular file of src except the weights and config.json, copied into out.
inline void copy_side_files(const std::string& src, const std::string& out) {
  namespace fs = std::filesystem;
  for (const auto& e : fs::directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const std::string n = e.path().filename().string();
    if (n == "config.json" || n.ends_with(".safetensors") || n == "model.safetensors.index.json" ||
        n.ends_with(".bin") || n.ends_with(".pt"))
      continue;
    fs::copy_file(e.path(), fs::path(out) / n, fs::copy_options::overwrite_existing);
  }
}

// (layer, role) of a block projection's weight name under `prefix`, if it is one.
inline bool parse_projection(Family f, const std::string& prefix, const std::string& name, int64_t& layer, Role& role) {
  const std::string lp = prefix + "layers.";
  if (name.rfind(lp, 0) != 0) return false;
  size_t i = lp.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j >= name.size() || name[j] != '.') return false;
  const std::string rest = name.substr(j + 1);
  for (Role r : kProjectionRoles)
    if (rest == hf_name(f, r)) {
      layer = std::stoll(name.substr(i, j - i));
      role = r;
      return true;
    }
  return false;
}

inline Family family_of(const io::ModelConfig& c, const std::string& src) {
  (void)src;
  return c.arch == io::ModelArch::Qwen3 ? Family::Qwen3 : Family::Gemma3;
}

}  // namespace detail

struct QuantizeOptions {
  quant::QuantType qtype = quant::QuantType::Nf4;
  int64_t blocksize = 64;
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";
};

// Returns the number of projections quantized.
inline int64_t quantize_checkpoint(const std::string& src, const std::string& out, const QuantizeOptions& o = {}) {
  namespace fs = std::filesystem;
  detail::prepare_out_dir(src, out);
  const io::ModelConfig cfg = io::load_model_config(src);
  const Family fam = detail::family_of(cfg, src);
  const io::Checkpoint ck = io::Checkpoint::open(src);
  const std::string prefix = detail::find_prefix(ck);
  io::SafetensorsWriter wr;
  int64_t n = 0;
  for (const io::TensorInfo* t : ck.tensors())
    DISTILL_CHECK(!t->name.ends_with(".absmax") && t->name.find(".quant_state.") == std::string::npos, src,
                  ": already quantized (", t->name, ")");
  for (const io::TensorInfo* t : ck.tensors()) {
    int64_t layer = 0;
    Role role{};
    if (detail::parse_projection(fam, prefix, t->name, layer, role)) {
      DISTILL_CHECK(t->shape.size() == 2, src, ": projection ", t->name, " is not 2-D");
      DISTILL_CHECK(t->dtype == io::StDtype::BF16 || t->dtype == io::StDtype::F16 || t->dtype == io::StDtype::F32, src,
                    ": cannot quantize ", t->name, " stored as ", io::dtype_name(t->dtype));
      const Tensor<float> w = ck.template load<float>(t->name);
      quant::add_bnb_tensors(wr, t->name,
                             quant::quantize_4bit(w.data(), t->shape, o.qtype, o.blocksize, o.double_quant, t->dtype));
      ++n;
    } else {
      const auto bytes = ck.bytes(t->name);
      wr.add_bytes(t->name, t->dtype, t->shape, std::vector<uint8_t>(bytes.begin(), bytes.end()));
    }
  }
  DISTILL_CHECK(n > 0, src, ": no block projection found to quantize");
  wr.set_metadata("format", "pt");
  wr.save((fs::path(out) / "model.safetensors").string());
  nlohmann::ordered_json j = io::read_json_file<nlohmann::ordered_json>((fs::path(src) / "config.json").string());
  j["quantization_config"] = quant::bnb_quantization_config(o.qtype, o.double_quant, o.compute_dtype);
  detail::copy_side_files(src, out);
  io::atomic_write((fs::path(out) / "config.json").string(), j.dump(2) + "\n");
  return n;
}

// Writes the model (its projections merged with their adapters) as a bf16 checkpoint; src is the checkpoint the
// model was loaded from (names, the other tensors, config and tokenizer come from there).
template <TransformerSpec Spec, class T, class D>
void export_merged(const Transformer<Spec, T, D>& model, const std::string& src, const std::string& out) {
  namespace fs = std::filesystem;
  detail::prepare_out_dir(src, out);
  const io::Checkpoint ck = io::Checkpoint::open(src);
  const auto& w = model.weights();
  io::SafetensorsWriter wr;
  int64_t n = 0;
  for (const io::TensorInfo* t : ck.tensors()) {
    int64_t layer = 0;
    Role role{};
    if (detail::parse_projection(Spec.family, w.prefix, t->name, layer, role)) {
      DISTILL_CHECK(layer < model.dims().layers, src, ": ", t->name, " beyond the model's layers");
      wr.add(t->name, merged_weight(w.blocks[static_cast<size_t>(layer)].proj(role)).template cast<bf16>());
      ++n;
      continue;
    }
    // 4-bit side tensors of a projection (P.weight.absmax, ...) are replaced by the merged P.weight.
    const auto dot = t->name.find(".weight.");
    if (dot != std::string::npos &&
        detail::parse_projection(Spec.family, w.prefix, t->name.substr(0, dot + 7), layer, role))
      continue;
    if (t->dtype == io::StDtype::BF16) {
      const auto bytes = ck.bytes(t->name);
      wr.add_bytes(t->name, t->dtype, t->shape, std::vector<uint8_t>(bytes.begin(), bytes.end()));
    } else if (t->dtype == io::StDtype::F32 || t->dtype == io::StDtype::F16) {
      wr.add(t->name, ck.template load<float>(t->name).template cast<bf16>());
    } else {
      throw Error(src + ": cannot export tensor " + t->name + " of dtype " + io::dtype_name(t->dtype));
    }
  }
  DISTILL_CHECK(n == model.dims().layers * 7, src, ": found ", n, " projections, expected ", model.dims().layers * 7);
  wr.set_metadata("format", "pt");
  wr.save((fs::path(out) / "model.safetensors").string());
  nlohmann::ordered_json j = io::read_json_file<nlohmann::ordered_json>((fs::path(src) / "config.json").string());
  j.erase("quantization_config");
  if (j.contains("torch_dtype")) j["torch_dtype"] = "bfloat16";
  j["dtype"] = "bfloat16";
  detail::copy_side_files(src, out);
  io::atomic_write((fs::path(out) / "config.json").string(), j.dump(2) + "\n");
}

}  // namespace distill::models
