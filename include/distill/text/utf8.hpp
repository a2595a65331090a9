// The text layer's name for the UTF-8 helpers, which live in core so that io/ (below text) uses them too.
#pragma once
#include "distill/core/utf8.hpp"

namespace distill::text {
namespace utf8 = ::distill::utf8;
}  // namespace distill::text
