// libFuzzer target: the safetensors header parser (parse_safetensors) on arbitrary bytes. A malformed file
// must end in distill::Error; any other exception, a crash or a sanitizer report is a bug. When the bytes
// parse, every tensor's byte span is read, so a wrong bounds check shows up under ASan.
#include <cstddef>
#include <cstdint>
#include <span>

#include "distill/io/safetensors_format.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> file(data, size);
  try {
    const auto h = distill::io::parse_safetensors(file, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    uint64_t total = 0;
    for (const auto& t : h.tensors) {
      const auto bytes = file.subspan(h.data_start + t.begin, t.nbytes());
      for (const uint8_t b : bytes) sink = sink ^ b;
      total += t.nbytes();
      if (h.find(t.name) != &t) __builtin_trap();  // the name index points at the tensor
      if (t.numel() < 0) __builtin_trap();
    }
    if (h.data_start + total != size) __builtin_trap();  // the tensors tile the data buffer exactly
  } catch (const distill::Error&) {
  }
  return 0;
}
