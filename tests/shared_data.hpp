// Where the tests find the real data that lives beside the checkout (../shared: tokenizers, GSM8K), never
// copied into the project. DISTILL_SHARED_DIR overrides the location. Tests that need it skip, saying so,
// when it is absent.
#pragma once
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace distill::test {

// ../shared/<rel> when it exists, else nullopt.
inline std::optional<std::string> shared_path(const std::string& rel) {
  const char* env = std::getenv("DISTILL_SHARED_DIR");
  const std::filesystem::path root =
      env ? std::filesystem::path(env) : std::filesystem::path(DISTILL_SOURCE_DIR) / ".." / "shared";
  const auto p = root / rel;
  if (!std::filesystem::exists(p)) return std::nullopt;
  return p.lexically_normal().string();
}

// Path of a committed fixture under tests/golden/.
inline std::string golden_path(const std::string& rel) {
  return std::string(DISTILL_SOURCE_DIR) + "/tests/golden/" + rel;
}

}  // namespace distill::test

// Use at the top of a TEST_CASE: binds `var` to ../shared/<rel> or returns after a visible skip message.
#define DISTILL_REQUIRE_SHARED(var, rel)                                                                     \
  const auto var##_opt = ::distill::test::shared_path(rel);                                                  \
  if (!var##_opt) {                                                                                          \
    MESSAGE("SKIPPED: ../shared/" rel " is absent (set DISTILL_SHARED_DIR to the shared data to run this)"); \
    return;                                                                                                  \
  }                                                                                                          \
  const std::string var = *var##_opt
