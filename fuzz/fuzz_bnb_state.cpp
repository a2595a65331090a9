// Fuzz target: bitsandbytes 4-bit state parsing and loading (include/distill/quant/bnb.hpp) on arbitrary bytes.
// Input starting with '{' is a packed quant_state JSON: parse_quant_state_json, and when it parses (and the
// tensor is small) a zero-filled Quant4 of that state must validate and serialize back to the same fields.
// Anything else is a whole safetensors file: every weight with a packed quant_state goes through load_bnb; a
// weight that loads is dequantized and its quant_state_json must parse back to what was loaded. Only
// distill::Error may escape; a broken round trip aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/io/safetensors_format.hpp"
#include "distill/quant/bnb.hpp"
#include "distill/quant/nf4.hpp"

namespace {

using namespace distill;
using namespace distill::quant;

void require_same(const BnbQuantState& a, const Quant4& q) {
  const bool same = a.type == q.type && a.blocksize == q.blocksize && a.dtype == q.dtype && a.shape == q.shape &&
                    a.nested == q.nested &&
                    (!a.nested || (a.nested_blocksize == q.nested_blocksize && a.nested_offset == q.nested_offset));
  if (!same) std::abort();
}

void fuzz_json(std::string_view text) {
  BnbQuantState s;
  try {
    s = parse_quant_state_json(text, "fuzz quant_state");
  } catch (const Error&) {
    return;
  }
  Quant4 q;
  q.type = s.type;
  q.blocksize = s.blocksize;
  q.dtype = s.dtype;
  q.shape = s.shape;
  q.code = code4(s.type);
  try {
    const int64_t n = quant::detail::checked_numel(q.shape, "fuzz");
    if (n > (int64_t{1} << 16)) return;
    q.packed.assign(static_cast<size_t>((n + 1) / 2), 0x77);
    const int64_t nb = q.blocks();
    if (s.nested) {
      q.nested = true;
      q.nested_blocksize = s.nested_blocksize;
      q.nested_offset = s.nested_offset;
      q.nested_code = dynamic_map();
      q.absmax_q.assign(static_cast<size_t>(nb), 0);
      q.nested_absmax.assign(static_cast<size_t>((nb + s.nested_blocksize - 1) / s.nested_blocksize), 1.0f);
    } else {
      q.absmax.assign(static_cast<size_t>(nb), 1.0f);
    }
    q.validate("fuzz");
  } catch (const Error&) {
    return;
  }
  require_same(parse_quant_state_json(quant_state_json(q), "round trip"), q);
  std::vector<float> out(static_cast<size_t>(q.numel()));
  dequantize_4bit(q, out.data());
}

void fuzz_file(std::span<const uint8_t> bytes) {
  io::SafetensorsHeader h;
  try {
    h = io::parse_safetensors(bytes, "fuzz.safetensors");
  } catch (const Error&) {
    return;
  }
  static const std::string kSuffixes[] = {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};
  for (const auto& t : h.tensors) {
    for (const auto& suffix : kSuffixes) {
      if (t.name.size() <= suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const std::string weight = t.name.substr(0, t.name.size() - suffix.size());
      Quant4 q;
      try {
        q = load_bnb(h, bytes, "fuzz.safetensors", weight);
      } catch (const Error&) {
        continue;
      }
      require_same(parse_quant_state_json(quant_state_json(q), "round trip"), q);
      std::vector<float> out(static_cast<size_t>(q.numel()));  // bounded by the file's packed bytes
      dequantize_4bit(q, out.data());
      if (!out.empty()) dequantize_4bit_range(q, out.size() / 3, out.size(), out.data());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == '{')
    fuzz_json(std::string_view(reinterpret_cast<const char*>(data), size));
  else
    fuzz_file(std::span<const uint8_t>(data, size));
  return 0;
}
