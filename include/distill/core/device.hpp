// Compile-time device tags. Ops dispatch on them with `if constexpr`, never virtual calls.
#pragma once
#include <type_traits>

namespace distill {

struct Cpu {
  static constexpr const char* name = "cpu";
};
struct Cuda {
  static constexpr const char* name = "cuda";
};

template <class D>
concept DeviceTag = std::is_same_v<D, Cpu> || std::is_same_v<D, Cuda>;

}  // namespace distill
