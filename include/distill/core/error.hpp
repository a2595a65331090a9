// Errors with context. Library code throws distill::Error (never exit()); the message carries
// file:line and, for shape problems, both shapes. Destructors only log.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace distill {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A shape that does not fit the op; the message names the op and both shapes.
class ShapeError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
[[noreturn]] inline void throw_error(const char* file, int line, const char* cond, Args&&... args) {
  std::ostringstream os;
  ((os << std::forward<Args>(args)), ...);
  os << " [" << cond << " at " << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace distill

// DISTILL_CHECK(cond, message parts...): throws distill::Error with the message, the condition and file:line.
#define DISTILL_CHECK(cond, ...)                                                         \
  do {                                                                                   \
    if (!(cond)) ::distill::detail::throw_error(__FILE__, __LINE__, #cond, __VA_ARGS__); \
  } while (0)
