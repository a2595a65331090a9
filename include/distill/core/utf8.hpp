// UTF-8 helpers (every layer that reads text: safetensors headers, tokenizers, chat, GSM8K): decoding and
// encoding scalars, validation, Python's str.strip(), and the repair of invalid
// input exactly like Python's bytes.decode("utf-8", errors="replace") (also Rust's String::from_utf8_lossy):
// each maximal subpart of an ill-formed sequence (Unicode §3.9, "U+FFFD substitution of maximal subparts")
// becomes one U+FFFD.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace distill::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;

// Length of the well-formed sequence starting at p[0] (1..4), or the negated length of its maximal ill-formed
// subpart (-1..-3) when it is not well formed. n > 0 is the number of bytes available.
inline int sequence_length(const unsigned char* p, size_t n) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  size_t i = 1;
  for (; i <= static_cast<size_t>(need); ++i) {
    if (i >= n) return -static_cast<int>(i);
    const unsigned char b = p[i];
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return -static_cast<int>(i);
  }
  return need + 1;
}

inline bool is_valid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII run, 8 bytes at a time
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const int l = sequence_length(p + i, n - i);
    if (l < 0) return false;
    i += static_cast<size_t>(l);
  }
  return true;
}

inline bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

inline void append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

inline std::string encode(char32_t c) {
  std::string s;
  append(s, c);
  return s;
}

// Decodes the scalar at s[i] of a string known to be valid UTF-8 and advances i.
inline char32_t next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const unsigned char c = p[0];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    i += 2;
    return (char32_t(c & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    i += 3;
    return (char32_t(c & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  i += 4;
  return (char32_t(c & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) | (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// Byte length of the scalar starting with lead byte c (valid UTF-8 assumed).
inline int char_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// Decodes the scalar that ends at s[i-1] of a valid string and moves i back to its start.
inline char32_t prev(std::string_view s, size_t& i) {
  size_t j = i - 1;
  while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
  size_t k = j;
  const char32_t c = next(s, k);
  i = j;
  return c;
}

// Python-compatible repair: well-formed sequences are copied, each maximal ill-formed subpart becomes U+FFFD.
inline std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      out.push_back(static_cast<char>(p[i++]));
      continue;
    }
    const int l = sequence_length(p + i, n - i);
    if (l > 0) {
      out.append(s.data() + i, static_cast<size_t>(l));
      i += static_cast<size_t>(l);
    } else {
      append(out, kReplacement);
      i += static_cast<size_t>(-l);
    }
  }
  return out;
}

// s itself when valid, else the repaired copy stored in `storage`.
inline std::string_view valid_view(std::string_view s, std::string& storage) {
  if (is_valid(s)) return s;
  storage = repair(s);
  return storage;
}

// Python's str.isspace() code points (Unicode White_Space plus the separators \x1c-\x1f): what str.strip(),
// and so Jinja's `trim`, removes.
inline bool py_isspace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
  switch (c) {
    case 0x85:
    case 0xa0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202f:
    case 0x205f:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200a;
  }
}

// Python str.strip() with no argument: leading and trailing Unicode whitespace. Ill-formed bytes are never
// whitespace, so trimming stops at them.
inline std::string_view py_strip(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t b = 0;
  while (b < s.size()) {
    if (sequence_length(p + b, s.size() - b) < 0) break;
    size_t k = b;
    if (!py_isspace(next(s, k))) break;
    b = k;
  }
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;  // back over continuation bytes to the lead byte (at most 3)
    while (start > b && e - start < 4 && (p[start] & 0xc0) == 0x80) --start;
    if (sequence_length(p + start, e - start) != static_cast<int>(e - start)) break;
    size_t k = start;
    if (!py_isspace(next(s, k))) break;
    e = start;
  }
  return s.substr(b, e - b);
}

}  // namespace distill::utf8
