// Fuzz target: the offline teacher-logits file (include/distill/data/topk_logits.hpp) on arbitrary bytes. The
// index and every record must either load or throw distill::Error; a record that loads must serialize back to
// exactly its bytes in the input, and a torn-tail index must never claim more bytes than the strict one.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "distill/data/topk_logits.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace distill;
  const std::span<const uint8_t> b(data, size);
  size_t lenient = 0;
  try {
    lenient = data::index_topk(b, "fuzz", /*allow_torn_tail=*/true).complete_bytes;
  } catch (const Error&) {
  }
  data::TopkIndex ix;
  try {
    ix = data::index_topk(b, "fuzz");
  } catch (const Error&) {
    return 0;
  }
  if (ix.complete_bytes != size || lenient != size) std::abort();  // a strict parse covers every byte
  for (const auto& [id, e] : ix.records) {
    try {
      const data::TopkRecord r = data::read_topk_record(b, ix, id, e, "fuzz");
      const std::string again = data::serialize_topk_record(r, ix.k);
      if (again.size() > size - e.offset || std::memcmp(again.data(), data + e.offset, again.size()) != 0) std::abort();
    } catch (const Error&) {
    }
  }
  return 0;
}
