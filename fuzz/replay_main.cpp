// Runs a fuzz target without libFuzzer (any compiler): every file under the given directories, then a
// fixed number of deterministic mutations of each (byte flips, truncations, insertions, splices). Built
// with the tests, so ctest replays the committed corpus on every CI run; scripts/fuzz.sh does the real
// coverage-guided fuzzing with clang.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void run(const std::vector<uint8_t>& v) { LLVMFuzzerTestOneInput(v.empty() ? nullptr : v.data(), v.size()); }

std::vector<uint8_t> mutate(std::vector<uint8_t> v, const std::vector<std::vector<uint8_t>>& all,
                            std::mt19937_64& rng) {
  const int kind = static_cast<int>(rng() % 5);
  auto pos = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  switch (kind) {
    case 0:  // flip a few bytes
      for (int i = 0, k = 1 + static_cast<int>(rng() % 4); i < k && !v.empty(); ++i)
        v[pos(v.size())] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case 1:  // truncate
      v.resize(pos(v.size() + 1));
      break;
    case 2:  // insert interesting bytes
      v.insert(v.begin() + static_cast<std::ptrdiff_t>(pos(v.size() + 1)),
               {static_cast<uint8_t>(rng()), 0x00, 0xff, '"', '{', '\\', 0xc3, 0x80});
      break;
    case 3: {  // splice with another input
      const auto& o = all[pos(all.size())];
      const size_t a = pos(v.size() + 1), b = pos(o.size() + 1);
      v.resize(a);
      v.insert(v.end(), o.begin() + static_cast<std::ptrdiff_t>(b), o.end());
      break;
    }
    default:  // overwrite a digit with a large number
      for (auto& c : v)
        if (c >= '0' && c <= '9' && rng() % 4 == 0) {
          c = '9';
          break;
        }
      break;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::vector<uint8_t>> inputs;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) inputs.push_back(read_file(f));
    } else {
      inputs.push_back(read_file(p));
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "no corpus files under the given paths\n");
    return 1;
  }
  for (const auto& v : inputs) run(v);
  const int rounds = std::getenv("DISTILL_REPLAY_MUTATIONS") ? std::atoi(std::getenv("DISTILL_REPLAY_MUTATIONS")) : 200;
  std::mt19937_64 rng(12345);
  for (const auto& v : inputs)
    for (int r = 0; r < rounds; ++r) run(mutate(v, inputs, rng));
  std::printf("replayed %zu corpus files + %d mutations each\n", inputs.size(), rounds);
  return 0;
}
