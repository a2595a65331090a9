// bitsandbytes / transformers serialization of 4-bit weights (SPEC §6.6): the safetensors keys a Linear4bit's
// state_dict holds at prefix P (what transformers' save_pretrained writes, checked byte for byte against
// tests/golden/nf4/qwen3_bnb), a strict loader for them, and config.json's "quantization_config".
//
//   P.weight                                U8 [(n+1)/2, 1]   packed codes (quant_storage uint8)
//   P.weight.absmax                         U8 [blocks] with double quant, else F32 [blocks]
//   P.weight.quant_map                      F32 [16]
//   P.weight.nested_absmax                  F32 [ceil(blocks/256)]    (double quant only)
//   P.weight.nested_quant_map               F32 [256]                 (double quant only)
//   P.weight.quant_state.bitsandbytes__nf4  U8 [len]  UTF-8 json.dumps of {quant_type, blocksize, dtype, shape
//       (, nested_blocksize, nested_dtype, nested_offset)} in that order ("__fp4" for FP4).
//
// A safetensors file can only hold this packed form: bnb's "unpacked" quant state (quant_type, blocksize, ...
// as separate state_dict entries) holds Python strings and ints, which torch.save keeps but safetensors
// cannot, so load_bnb reads the packed form (with or without double quant). bnb itself ignores the stored
// quant_map when dequantizing (it uses its built-in tables); load_bnb insists it is the standard table.
#pragma once
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/io/safetensors.hpp"
#include "distill/quant/nf4.hpp"

namespace distill::quant {

// The packed quant_state's non-tensor items, as parsed from its JSON.
struct BnbQuantState {
  QuantType type = QuantType::Nf4;
  int64_t blocksize = 64;
  io::StDtype dtype = io::StDtype::BF16;
  std::vector<int64_t> shape;
  bool nested = false;
  int64_t nested_blocksize = 256;
  float nested_offset = 0.f;
};

namespace detail {

// torch dtype names as bnb writes them (str(dtype) without "torch.").
inline const char* torch_dtype_name(io::StDtype d) {
  switch (d) {
    case io::StDtype::BF16:
      return "bfloat16";
    case io::StDtype::F16:
      return "float16";
    case io::StDtype::F32:
      return "float32";
    default:
      throw Error(std::string("bitsandbytes quant_state: dtype ") + io::dtype_name(d) +
                  " is not one bitsandbytes quantizes (BF16, F16, F32)");
  }
}

// Python's repr() of a float (what json.dumps writes): the shortest round-trip digits, positional when the
// decimal exponent is in [-4, 16), otherwise d.ddde±XX; positional values always carry a ".0" or fraction.
inline std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v < 0 ? "-Infinity" : "Infinity";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  const std::string s(buf, r.ptr);  // [-]d[.ddd]e(+|-)XX
  const bool neg = s[0] == '-';
  const size_t e = s.find('e');
  std::string digits;
  for (size_t i = neg ? 1 : 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  const int exp10 = std::stoi(s.substr(e + 1));
  const int decpt = exp10 + 1;  // value = 0.digits * 10^decpt
  std::string out = neg ? "-" : "";
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (digits.size() > 1) out += "." + digits.substr(1);
    const int a = std::abs(exp10);
    out += std::string("e") + (exp10 < 0 ? "-" : "+") + (a < 10 ? "0" : "") + std::to_string(a);
  } else if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (static_cast<size_t>(decpt) >= digits.size()) {
    out += digits + std::string(static_cast<size_t>(decpt) - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

template <class T>
inline std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
template <class T, size_t N>
inline std::vector<uint8_t> bytes_of(const std::array<T, N>& v) {
  std::vector<uint8_t> b(N * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

inline bool json_positive_int(const nlohmann::json& j, int64_t max, int64_t& out) {
  uint64_t u = 0;
  if (!io::detail::json_to_u64(j, u) || u == 0 || u > static_cast<uint64_t>(max)) return false;
  out = static_cast<int64_t>(u);
  return true;
}

}  // namespace detail

// Parses the packed quant_state JSON (strictly: an object with exactly bnb's keys, no duplicates, the nested
// keys all present or all absent). `what` names the source in errors.
inline BnbQuantState parse_quant_state_json(std::string_view text, std::string_view what) {
  using io::detail::st_fail;
  const nlohmann::json j = io::detail::parse_json_strict(text, what, "quant_state JSON", /*max_depth=*/4);
  if (!j.is_object()) st_fail(what, std::string("quant_state JSON must be an object, found ") + j.type_name());
  static const char* kKeys[] = {"quant_type",       "blocksize",    "dtype",        "shape",
                                "nested_blocksize", "nested_dtype", "nested_offset"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return it.key() == k; }) ==
        std::end(kKeys))
      st_fail(what, "quant_state JSON has an unexpected key " + io::detail::quote_name(it.key()) +
                        " (bitsandbytes writes quant_type, blocksize, dtype, shape and the nested_* keys)");
  auto need = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) st_fail(what, std::string("quant_state JSON lacks \"") + k + "\"");
    return j[k];
  };
  BnbQuantState s;
  const auto& qt = need("quant_type");
  if (qt == "nf4")
    s.type = QuantType::Nf4;
  else if (qt == "fp4")
    s.type = QuantType::Fp4;
  else
    st_fail(what, "unknown quant_type " + qt.dump().substr(0, 80) + " (bitsandbytes 4-bit has \"nf4\" and \"fp4\")");
  if (!detail::json_positive_int(need("blocksize"), 4096, s.blocksize) || !is_allowed_blocksize(s.blocksize))
    st_fail(what, "blocksize " + j["blocksize"].dump().substr(0, 80) +
                      " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
  const auto& dt = need("dtype");
  if (dt == "bfloat16")
    s.dtype = io::StDtype::BF16;
  else if (dt == "float16")
    s.dtype = io::StDtype::F16;
  else if (dt == "float32")
    s.dtype = io::StDtype::F32;
  else
    st_fail(what, "dtype " + dt.dump().substr(0, 80) + " is not bfloat16, float16 or float32");
  const auto& sh = need("shape");
  if (!sh.is_array() || sh.empty() || sh.size() > 16)
    st_fail(what, "shape must be a non-empty array of extents, found " + sh.dump().substr(0, 80));
  for (const auto& d : sh) {
    uint64_t u = 0;
    if (!io::detail::json_to_u64(d, u) || u > (uint64_t{1} << 48))
      st_fail(what, "shape extents must be non-negative integers, found " + sh.dump().substr(0, 80));
    s.shape.push_back(static_cast<int64_t>(u));
  }
  const int present = j.contains("nested_blocksize") + j.contains("nested_dtype") + j.contains("nested_offset");
  if (present != 0 && present != 3)
    st_fail(what, "quant_state JSON has only some of nested_blocksize, nested_dtype, nested_offset");
  if (present == 3) {
    s.nested = true;
    if (!detail::json_positive_int(j["nested_blocksize"], int64_t{1} << 20, s.nested_blocksize))
      st_fail(what, "nested_blocksize " + j["nested_blocksize"].dump().substr(0, 80) + " is not a positive integer");
    if (j["nested_dtype"] != "float32")
      st_fail(what, "nested_dtype " + j["nested_dtype"].dump().substr(0, 80) + " is not \"float32\"");
    const auto& off = j["nested_offset"];
    if (!off.is_number()) st_fail(what, "nested_offset must be a number, found " + off.dump().substr(0, 80));
    s.nested_offset = static_cast<float>(off.get<double>());  // bnb: torch.tensor(float(v)), f32
    if (!std::isfinite(s.nested_offset)) st_fail(what, "nested_offset " + off.dump() + " is not a finite f32");
  }
  return s;
}

// json.dumps of the packed quant_state, byte for byte as bnb writes it.
inline std::string quant_state_json(const Quant4& q) {
  std::string s = std::string("{\"quant_type\": \"") + quant_type_name(q.type) +
                  "\", \"blocksize\": " + std::to_string(q.blocksize) + ", \"dtype\": \"" +
                  detail::torch_dtype_name(q.dtype) + "\", \"shape\": [";
  for (size_t i = 0; i < q.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(q.shape[i]);
  s += "]";
  if (q.nested)
    s += ", \"nested_blocksize\": " + std::to_string(q.nested_blocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
         detail::python_float_repr(static_cast<double>(q.nested_offset));
  return s + "}";
}

// The name of the packed quant_state tensor for a weight.
inline std::string quant_state_key(const std::string& weight_name, QuantType t) {
  return weight_name + ".quant_state.bitsandbytes__" + quant_type_name(t);
}

// Adds the tensors of one Linear4bit weight as transformers' save_pretrained writes them.
inline void add_bnb_tensors(io::SafetensorsWriter& w, const std::string& weight_name, const Quant4& q) {
  q.validate(weight_name);
  const int64_t nb = q.blocks();
  w.add_bytes(weight_name, io::StDtype::U8, {static_cast<int64_t>(q.packed.size()), 1}, q.packed);
  if (q.nested) {
    w.add_bytes(weight_name + ".absmax", io::StDtype::U8, {nb}, q.absmax_q);
    w.add_bytes(weight_name + ".nested_absmax", io::StDtype::F32, {static_cast<int64_t>(q.nested_absmax.size())},
                detail::bytes_of(q.nested_absmax));
    w.add_bytes(weight_name + ".nested_quant_map", io::StDtype::F32, {256}, detail::bytes_of(q.nested_code));
  } else {
    w.add_bytes(weight_name + ".absmax", io::StDtype::F32, {nb}, detail::bytes_of(q.absmax));
  }
  w.add_bytes(weight_name + ".quant_map", io::StDtype::F32, {16}, detail::bytes_of(q.code));
  const std::string js = quant_state_json(q);
  w.add_bytes(quant_state_key(weight_name, q.type), io::StDtype::U8, {static_cast<int64_t>(js.size())},
              std::vector<uint8_t>(js.begin(), js.end()));
}

namespace detail {

struct TensorBytes {
  const io::TensorInfo* info = nullptr;
  std::span<const uint8_t> bytes;
};

inline std::vector<float> f32_values(const TensorBytes& t) {
  std::vector<float> v(t.bytes.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), v.size() * 4);
  return v;
}

// The loader over any tensor source: find(name) -> TensorBytes (info null when absent); `names` lists every
// tensor (to reject unknown keys under the weight's prefix).
template <class Find>
inline Quant4 load_bnb_impl(Find&& find, const std::vector<const io::TensorInfo*>& names, std::string_view file,
                            const std::string& w) {
  using io::detail::st_fail_tensor;
  auto expect = [&](const std::string& name, io::StDtype dt, std::vector<int64_t> shape) -> TensorBytes {
    const TensorBytes t = find(name);
    if (!t.info) st_fail_tensor(file, name, "missing (the 4-bit weight " + io::detail::quote_name(w) + " needs it)");
    if (t.info->dtype != dt)
      st_fail_tensor(file, name,
                     std::string("dtype ") + io::dtype_name(t.info->dtype) + ", expected " + io::dtype_name(dt));
    if (t.info->shape != shape)
      st_fail_tensor(file, name, "shape " + shape_str(t.info->shape) + ", expected " + shape_str(shape));
    return t;
  };
  const TensorBytes nf4 = find(quant_state_key(w, QuantType::Nf4)), fp4 = find(quant_state_key(w, QuantType::Fp4));
  if (nf4.info && fp4.info) st_fail_tensor(file, w, "has both a bitsandbytes__nf4 and a bitsandbytes__fp4 quant_state");
  if (!nf4.info && !fp4.info)
    st_fail_tensor(file, w,
                   "no packed quant_state (" + quant_state_key(w, QuantType::Nf4) + " or __fp4): not a " +
                       "bitsandbytes 4-bit weight");
  const TensorBytes qs = nf4.info ? nf4 : fp4;
  if (qs.info->dtype != io::StDtype::U8 || qs.info->shape.size() != 1)
    st_fail_tensor(file, qs.info->name, "the packed quant_state must be a 1-D U8 tensor of JSON bytes");
  const std::string_view text(reinterpret_cast<const char*>(qs.bytes.data()), qs.bytes.size());
  const std::string where = std::string(file) + ": tensor " + io::detail::quote_name(qs.info->name);
  const BnbQuantState s = parse_quant_state_json(text, where);
  if ((s.type == QuantType::Nf4) != (nf4.info != nullptr))
    st_fail_tensor(
        file, qs.info->name,
        std::string("holds quant_type \"") + quant_type_name(s.type) + "\" but its key names the other type");

  Quant4 q;
  q.type = s.type;
  q.blocksize = s.blocksize;
  q.shape = s.shape;
  q.dtype = s.dtype;
  const int64_t n = checked_numel(q.shape, where);
  const int64_t nb = q.blocks();

  const TensorBytes wt = find(w);
  if (!wt.info) st_fail_tensor(file, w, "missing (its quant_state is present)");
  if (wt.info->shape.size() != 2 || wt.info->shape[1] != 1 || static_cast<int64_t>(wt.bytes.size()) != (n + 1) / 2)
    st_fail_tensor(file, w,
                   std::string("packed weight is ") + io::dtype_name(wt.info->dtype) + " " + shape_str(wt.info->shape) +
                       " (" + std::to_string(wt.bytes.size()) + " bytes); shape " + shape_str(q.shape) + " needs " +
                       std::to_string((n + 1) / 2) + " bytes as [bytes / itemsize, 1]");
  q.packed.assign(wt.bytes.begin(), wt.bytes.end());

  const TensorBytes qm = expect(w + ".quant_map", io::StDtype::F32, {16});
  std::memcpy(q.code.data(), qm.bytes.data(), 64);
  if (std::memcmp(q.code.data(), code4(q.type).data(), 64) != 0)
    st_fail_tensor(
        file, w + ".quant_map",
        std::string("differs from bitsandbytes' ") + quant_type_name(q.type) +
            " table (bitsandbytes dequantizes with its built-in table, so this file would not load as saved)");
  if (s.nested) {
    q.nested = true;
    q.nested_blocksize = s.nested_blocksize;
    q.nested_offset = s.nested_offset;
    const TensorBytes a = expect(w + ".absmax", io::StDtype::U8, {nb});
    q.absmax_q.assign(a.bytes.begin(), a.bytes.end());
    const int64_t nb2 = (nb + q.nested_blocksize - 1) / q.nested_blocksize;
    q.nested_absmax = f32_values(expect(w + ".nested_absmax", io::StDtype::F32, {nb2}));
    const auto nm = f32_values(expect(w + ".nested_quant_map", io::StDtype::F32, {256}));
    std::copy(nm.begin(), nm.end(), q.nested_code.begin());
  } else {
    q.absmax = f32_values(expect(w + ".absmax", io::StDtype::F32, {nb}));
    for (const char* k : {".nested_absmax", ".nested_quant_map"})
      if (find(w + k).info)
        st_fail_tensor(file, w + k, "present, but the quant_state has no nested_* keys (no double quantization)");
  }
  const std::string prefix = w + ".";
  for (const io::TensorInfo* t : names) {
    const std::string_view nm = t->name;
    if (nm.substr(0, prefix.size()) != prefix) continue;
    const std::string_view rest = nm.substr(prefix.size());
    if (rest != "absmax" && rest != "quant_map" && rest != "nested_absmax" && rest != "nested_quant_map" &&
        rest != "quant_state.bitsandbytes__nf4" && rest != "quant_state.bitsandbytes__fp4")
      st_fail_tensor(file, t->name, "unexpected key under the 4-bit weight " + io::detail::quote_name(w));
  }
  q.validate(where);
  return q;
}

}  // namespace detail

// True when the checkpoint holds `weight_name` in bitsandbytes 4-bit form (a packed quant_state or an absmax
// beside it); load_bnb then either loads it or says what is wrong.
inline bool is_bnb_quantized(const io::Checkpoint& ck, const std::string& weight_name) {
  return ck.find(quant_state_key(weight_name, QuantType::Nf4)) ||
         ck.find(quant_state_key(weight_name, QuantType::Fp4)) || ck.find(weight_name + ".absmax");
}

// Loads the 4-bit weight `weight_name` ("P.weight") from a checkpoint; strict, errors name the tensor.
inline Quant4 load_bnb(const io::Checkpoint& ck, const std::string& weight_name) {
  auto find = [&](const std::string& name) {
    detail::TensorBytes t;
    t.info = ck.find(name);
    if (t.info) t.bytes = ck.bytes(name);
    return t;
  };
  return detail::load_bnb_impl(find, ck.tensors(), ck.path(), weight_name);
}

// The same over a whole safetensors file held in memory (already parsed with io::parse_safetensors).
inline Quant4 load_bnb(const io::SafetensorsHeader& h, std::span<const uint8_t> whole_file, std::string_view file_name,
                       const std::string& weight_name) {
  std::vector<const io::TensorInfo*> names;
  for (const auto& t : h.tensors) names.push_back(&t);
  auto find = [&](const std::string& name) {
    detail::TensorBytes t;
    t.info = h.find(name);
    if (t.info) t.bytes = whole_file.subspan(h.data_start + t.info->begin, t.info->nbytes());
    return t;
  };
  return detail::load_bnb_impl(find, names, file_name, weight_name);
}

// config.json's "quantization_config" as transformers 5.24 writes it for BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type, bnb_4bit_use_double_quant, bnb_4bit_compute_dtype) (keys sorted, as json.dumps(...,
// sort_keys=True) and nlohmann both order them).
inline nlohmann::json bnb_quantization_config(QuantType t, bool double_quant, std::string compute_dtype = "bfloat16") {
  DISTILL_CHECK(compute_dtype == "bfloat16" || compute_dtype == "float16" || compute_dtype == "float32",
                "bnb_quantization_config: compute dtype \"", compute_dtype, "\" is not bfloat16, float16 or float32");
  return nlohmann::json{{"_load_in_4bit", true},
                        {"_load_in_8bit", false},
                        {"bnb_4bit_compute_dtype", compute_dtype},
                        {"bnb_4bit_quant_storage", "uint8"},
                        {"bnb_4bit_quant_type", quant_type_name(t)},
                        {"bnb_4bit_use_double_quant", double_quant},
                        {"llm_int8_enable_fp32_cpu_offload", false},
                        {"llm_int8_has_fp16_weight", false},
                        {"llm_int8_skip_modules", nullptr},
                        {"llm_int8_threshold", 6.0},
                        {"load_in_4bit", true},
                        {"load_in_8bit", false},
                        {"quant_method", "bitsandbytes"}};
}

}  // namespace distill::quant
