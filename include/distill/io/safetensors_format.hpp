// The safetensors format (SPEC §3.1): dtypes, the validated header of a whole file in memory, and the writer
// whose bytes equal the Python `safetensors` package's (0.8.0) for the same tensors.
//
// Layout: u64 little-endian N, N bytes of UTF-8 JSON (the header), then the data buffer. The header maps
// tensor names to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the data buffer) plus
// an optional "__metadata__" string->string map. parse_safetensors() checks every rule the reference reader
// checks (and a few it lets through: duplicate keys, unknown fields) and throws one distill::Error naming the
// file and, where there is one, the tensor. It never reads outside the given bytes; the fuzzer runs it.
//
// This file does not depend on Tensor (the fuzz target and tools use it alone); safetensors.hpp adds the
// mmap-backed file, sharded checkpoints and typed loads.
#pragma once
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/core/utf8.hpp"

namespace distill::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

// Element types, in the reference's enum order (it drives the writer's ordering: dtype descending, then name).
// The reference also has the sub-byte F4, F6_E2M3 and F6_E3M2, which are rejected here.
enum class StDtype : uint8_t {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

namespace detail {
struct StDtypeInfo {
  StDtype dtype;
  const char* name;
  uint8_t size;
};
inline constexpr std::array<StDtypeInfo, 19> kStDtypes{{
    {StDtype::BOOL, "BOOL", 1},
    {StDtype::U8, "U8", 1},
    {StDtype::I8, "I8", 1},
    {StDtype::F8_E5M2, "F8_E5M2", 1},
    {StDtype::F8_E4M3, "F8_E4M3", 1},
    {StDtype::F8_E8M0, "F8_E8M0", 1},
    {StDtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 1},
    {StDtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 1},
    {StDtype::I16, "I16", 2},
    {StDtype::U16, "U16", 2},
    {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2},
    {StDtype::I32, "I32", 4},
    {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},
    {StDtype::C64, "C64", 8},
    {StDtype::F64, "F64", 8},
    {StDtype::I64, "I64", 8},
    {StDtype::U64, "U64", 8},
}};
}  // namespace detail

inline constexpr const char* dtype_name(StDtype d) { return detail::kStDtypes[static_cast<size_t>(d)].name; }
inline constexpr size_t dtype_size(StDtype d) { return detail::kStDtypes[static_cast<size_t>(d)].size; }
// The dtype named `s` ("F32", "BF16", ...), or false when there is none.
inline bool dtype_from_name(std::string_view s, StDtype& out) {
  for (const auto& e : detail::kStDtypes)
    if (s == e.name) {
      out = e.dtype;
      return true;
    }
  return false;
}

struct TensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;   // [] is a scalar (one element)
  uint64_t begin = 0, end = 0;  // [begin, end) in the data buffer
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  uint64_t nbytes() const { return end - begin; }
};

// A parsed, validated header. `tensors` are in data order (by offset; header order breaks ties).
struct SafetensorsHeader {
  uint64_t header_size = 0;  // N, the JSON length including padding
  uint64_t data_start = 0;   // 8 + N: file offset of the data buffer
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  std::map<std::string, size_t, std::less<>> index;  // name -> position in `tensors`

  const TensorInfo* find(std::string_view name) const {
    const auto it = index.find(name);
    return it == index.end() ? nullptr : &tensors[it->second];
  }
};

inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;  // the reference reader's limit

namespace detail {

// `s` as a JSON-like quoted string for messages: control bytes escaped, long names shortened.
inline std::string quote_name(std::string_view s) {
  constexpr size_t kMax = 160;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

[[noreturn]] inline void st_fail(std::string_view file, const std::string& what) {
  throw Error(std::string(file) + ": " + what);
}
[[noreturn]] inline void st_fail_tensor(std::string_view file, std::string_view tensor, const std::string& what) {
  throw Error(std::string(file) + ": tensor " + quote_name(tensor) + ": " + what);
}

// Offset of the first byte that is not part of valid UTF-8 (overlongs, surrogates and > U+10FFFF are invalid,
// as in Rust's str::from_utf8), or npos.
inline size_t utf8_invalid_at(std::span<const uint8_t> s) {
  for (size_t i = 0; i < s.size();) {
    const int l = utf8::sequence_length(s.data() + i, s.size() - i);
    if (l < 0) return i;
    i += static_cast<size_t>(l);
  }
  return std::string_view::npos;
}

// Parses JSON text, rejecting duplicate keys in any object (nlohmann keeps one silently) and nesting deeper
// than `max_depth`. `top_keys` receives the keys of the top-level object in document order.
inline nlohmann::json parse_json_strict(std::string_view text, std::string_view file, std::string_view what,
                                        int max_depth, std::vector<std::string>* top_keys = nullptr) {
  std::vector<std::unordered_set<std::string>> seen;  // keys of each open object
  std::string current_top;                            // the top-level key whose value is being parsed
  int depth = 0;
  auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) -> bool {
    using E = nlohmann::json::parse_event_t;
    switch (ev) {
      case E::object_start:
      case E::array_start:
        if (++depth > max_depth)
          st_fail(file, std::string(what) + " nests deeper than " + std::to_string(max_depth) + " levels");
        if (ev == E::object_start) seen.emplace_back();
        break;
      case E::object_end:
      case E::array_end:
        --depth;
        if (ev == E::object_end && !seen.empty()) seen.pop_back();
        break;
      case E::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!seen.back().insert(k).second)
          st_fail(file, std::string(what) + " has the key " + quote_name(k) + " twice" +
                            (seen.size() > 1 ? " (inside " + quote_name(current_top) + ")" : std::string()));
        if (seen.size() == 1) {
          current_top = k;
          if (top_keys) top_keys->push_back(k);
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    st_fail(file, std::string(what) + " is not valid JSON: " + e.what());
  }
}

inline const char* json_type_name(const nlohmann::json& j) {
  if (j.is_number_float()) return "a non-integer number";
  if (j.is_number_integer() && !j.is_number_unsigned() && j.get<int64_t>() < 0) return "a negative number";
  return j.type_name();
}

// A non-negative JSON integer (no floats, no negatives), or false.
inline bool json_to_u64(const nlohmann::json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

inline TensorInfo parse_tensor_entry(const std::string& name, const nlohmann::json& e, std::string_view file) {
  if (!e.is_object()) st_fail_tensor(file, name, std::string("entry must be an object, found ") + e.type_name());
  for (auto it = e.begin(); it != e.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      st_fail_tensor(file, name, "unexpected field " + quote_name(it.key()) + " (expected dtype, shape, data_offsets)");
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!e.contains(k)) st_fail_tensor(file, name, std::string("missing field \"") + k + "\"");
  TensorInfo t;
  t.name = name;
  const auto& dt = e["dtype"];
  if (!dt.is_string()) st_fail_tensor(file, name, std::string("dtype must be a string, found ") + dt.type_name());
  const auto& dts = dt.get_ref<const std::string&>();
  if (!dtype_from_name(dts, t.dtype)) {
    if (dts == "F4" || dts == "F6_E2M3" || dts == "F6_E3M2")
      st_fail_tensor(file, name, "sub-byte dtype " + dts + " is not supported");
    st_fail_tensor(file, name, "unknown dtype " + quote_name(dts));
  }
  const auto& sh = e["shape"];
  if (!sh.is_array()) st_fail_tensor(file, name, std::string("shape must be an array, found ") + sh.type_name());
  // Elements, then bytes, with overflow checks in the reference's order (a later 0 does not excuse an
  // earlier overflow).
  uint64_t numel = 1, nonzero = 1;  // nonzero: product of the non-zero dims, kept within int64 so that
  bool overflow = false;            // numel(), strides and partial products never overflow downstream
  for (const auto& d : sh) {
    uint64_t v = 0;
    if (!json_to_u64(d, v))
      st_fail_tensor(file, name,
                     std::string("shape entries must be non-negative integers, found ") + json_type_name(d));
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
    if (!overflow && v != 0 && numel > std::numeric_limits<uint64_t>::max() / v) overflow = true;
    if (!overflow) numel *= v;
    if (v != 0) {
      if (nonzero > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / v)
        overflow = true;
      else
        nonzero *= v;
    }
    t.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(v, std::numeric_limits<int64_t>::max())));
  }
  const uint64_t esize = dtype_size(t.dtype);
  if (!overflow && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / esize) overflow = true;
  if (overflow) st_fail_tensor(file, name, "shape " + sh.dump() + " of " + dts + " overflows the byte size");
  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    st_fail_tensor(file, name, "data_offsets must be an array of two integers, found " + off.dump().substr(0, 80));
  if (!json_to_u64(off[0], t.begin) || !json_to_u64(off[1], t.end))
    st_fail_tensor(file, name, "data_offsets must be non-negative integers, found " + off.dump().substr(0, 80));
  if (t.begin > t.end)
    st_fail_tensor(
        file, name,
        "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before they begin");
  const uint64_t need = numel * esize;
  if (t.end - t.begin != need)
    st_fail_tensor(file, name,
                   "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold " +
                       std::to_string(t.end - t.begin) + " bytes but shape " + sh.dump() + " of " + dts + " needs " +
                       std::to_string(need));
  return t;
}

}  // namespace detail

// Parses and validates a whole safetensors file held in memory. `file_name` is only used in messages.
inline SafetensorsHeader parse_safetensors(std::span<const uint8_t> whole_file, std::string_view file_name) {
  using detail::st_fail;
  using detail::st_fail_tensor;
  const std::string_view file = file_name;
  if (whole_file.size() < 8)
    st_fail(file, "file is " + std::to_string(whole_file.size()) +
                      " bytes, too short for the 8-byte header length (not a safetensors file?)");
  uint64_t n = 0;
  std::memcpy(&n, whole_file.data(), 8);
  if (n > kMaxSafetensorsHeader)
    st_fail(file, "header length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(kMaxSafetensorsHeader) + " bytes (corrupt file?)");
  if (n + 8 > whole_file.size())
    st_fail(file, "header length " + std::to_string(n) + " runs past the end of the " +
                      std::to_string(whole_file.size()) + "-byte file (truncated?)");
  const auto header = whole_file.subspan(8, n);
  if (const size_t bad = detail::utf8_invalid_at(header); bad != std::string_view::npos)
    st_fail(file, "header is not valid UTF-8 (byte " + std::to_string(bad) + " of the header)");
  // JSON never holds a raw NUL (nlohmann would stop reading there and ignore the rest).
  if (const auto z = std::find(header.begin(), header.end(), uint8_t{0}); z != header.end())
    st_fail(file, "header holds a NUL byte (byte " + std::to_string(z - header.begin()) + " of the header)");
  if (header.size() >= 3 && header[0] == 0xEF && header[1] == 0xBB && header[2] == 0xBF)
    st_fail(file, "header starts with a byte-order mark");
  const std::string_view text(reinterpret_cast<const char*>(header.data()), header.size());

  std::vector<std::string> keys;
  const nlohmann::json j = detail::parse_json_strict(text, file, "header", /*max_depth=*/8, &keys);
  if (!j.is_object()) st_fail(file, std::string("header must be a JSON object, found ") + j.type_name());

  SafetensorsHeader h;
  h.header_size = n;
  h.data_start = 8 + n;
  h.tensors.reserve(keys.size());
  for (const auto& k : keys) {
    const auto& e = j[k];
    if (k == "__metadata__") {
      if (e.is_null()) continue;  // the reference reader accepts null
      if (!e.is_object())
        st_fail(file, std::string("__metadata__ must be an object of strings, found ") + e.type_name());
      for (auto it = e.begin(); it != e.end(); ++it) {
        if (!it.value().is_string())
          st_fail(file, "__metadata__ value of " + detail::quote_name(it.key()) + " must be a string, found " +
                            it.value().type_name());
        h.metadata.emplace(it.key(), it.value().get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(detail::parse_tensor_entry(k, e, file));
  }

  // Data order; tensors must tile [0, data size) exactly: no overlaps, no holes, no trailing bytes.
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = whole_file.size() - h.data_start;
  uint64_t expected = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < expected)
      st_fail_tensor(file, t.name,
                     "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] overlap tensor " +
                         detail::quote_name(prev ? prev->name : "") + " (which ends at " + std::to_string(expected) +
                         ")");
    if (t.begin > expected)
      st_fail_tensor(file, t.name,
                     "data_offsets begin at " + std::to_string(t.begin) + " but the previous tensor ends at " +
                         std::to_string(expected) + " (a hole in the data buffer" +
                         (prev ? "" : "; the first tensor must begin at 0") + ")");
    if (t.end > data_size)
      st_fail_tensor(file, t.name,
                     "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         "] run past the end of the data buffer (" + std::to_string(data_size) +
                         " bytes): truncated file?");
    expected = t.end;
    prev = &t;
  }
  if (expected != data_size)
    st_fail(file, "data buffer has " + std::to_string(data_size - expected) + " trailing bytes after the last tensor" +
                      (prev ? " " + detail::quote_name(prev->name) : std::string()) + " (ends at " +
                      std::to_string(expected) + " of " + std::to_string(data_size) + ")");
  for (size_t i = 0; i < h.tensors.size(); ++i) h.index.emplace(h.tensors[i].name, i);
  return h;
}

// --- writer -----------------------------------------------------------------------------------------------

// A tensor to write: its bytes (little-endian, row-major) are referenced, not owned.
struct TensorRef {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
};

namespace detail {
// JSON string escaping exactly as serde_json (the reference writer): \" \\ \b \f \n \r \t, other control
// bytes as \u00xx (lowercase hex), everything else (including DEL and non-ASCII UTF-8) verbatim.
inline void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          static const char* hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

inline void check_writer_string(std::string_view s, const char* what) {
  const std::span<const uint8_t> b(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  if (utf8_invalid_at(b) != std::string_view::npos)
    throw Error(std::string("safetensors writer: ") + what + " " + quote_name(s) + " is not valid UTF-8");
}
}  // namespace detail

// The bytes of a safetensors file holding `tensors`, identical to Python `safetensors.serialize` (0.8.0) with
// the same tensors: data ordered by dtype descending then name ascending (bytewise), compact JSON header with
// "__metadata__" first and tensors in data order, padded with spaces to a multiple of 8.
// Metadata: an empty map writes no "__metadata__" (Python's metadata=None). Python writes a non-empty map in
// hash order, so byte equality with Python holds for at most one metadata key; here keys are sorted.
inline std::vector<uint8_t> serialize_safetensors(std::vector<TensorRef> tensors,
                                                  const std::map<std::string, std::string>& metadata = {}) {
  for (const auto& t : tensors) {
    detail::check_writer_string(t.name, "tensor name");
    if (t.name == "__metadata__") throw Error("safetensors writer: a tensor may not be named \"__metadata__\"");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw Error("safetensors writer: tensor " + detail::quote_name(t.name) + " has a negative extent");
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
        throw Error("safetensors writer: tensor " + detail::quote_name(t.name) + ": shape overflows");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel > std::numeric_limits<uint64_t>::max() / dtype_size(t.dtype) ||
        numel * dtype_size(t.dtype) != t.data.size())
      throw Error("safetensors writer: tensor " + detail::quote_name(t.name) + " has " + std::to_string(t.data.size()) +
                  " bytes of data but its shape and dtype " + dtype_name(t.dtype) + " need " +
                  std::to_string(numel * dtype_size(t.dtype)));
  }
  for (const auto& [k, v] : metadata) {
    detail::check_writer_string(k, "metadata key");
    detail::check_writer_string(v, "metadata value");
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorRef& a, const TensorRef& b) {
    return a.dtype != b.dtype ? a.dtype > b.dtype : a.name < b.name;
  });
  {
    std::vector<std::string_view> names;
    for (const auto& t : tensors) names.push_back(t.name);
    std::sort(names.begin(), names.end());
    for (size_t i = 1; i < names.size(); ++i)
      if (names[i] == names[i - 1])
        throw Error("safetensors writer: tensor " + detail::quote_name(names[i]) + " is given twice");
  }

  std::string json = "{";
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool f = true;
    for (const auto& [k, v] : metadata) {
      if (!f) json += ',';
      f = false;
      detail::append_json_string(json, k);
      json += ':';
      detail::append_json_string(json, v);
    }
    json += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (!first) json += ',';
    first = false;
    detail::append_json_string(json, t.name);
    json += ":{\"dtype\":\"";
    json += dtype_name(t.dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) json += ',';
      json += std::to_string(t.shape[i]);
    }
    json += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.data.size()) + "]}";
    offset += t.data.size();
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kMaxSafetensorsHeader)
    throw Error("safetensors writer: the header would be " + std::to_string(json.size()) +
                " bytes, over the format's limit of " + std::to_string(kMaxSafetensorsHeader));

  std::vector<uint8_t> out(8 + json.size() + offset);
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, json.data(), json.size());
  uint8_t* p = out.data() + 8 + json.size();
  for (const auto& t : tensors) {
    if (!t.data.empty()) std::memcpy(p, t.data.data(), t.data.size());
    p += t.data.size();
  }
  return out;
}

}  // namespace distill::io
