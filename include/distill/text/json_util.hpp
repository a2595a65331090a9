// Checked access to the parsed tokenizer.json: every error names the file and the JSON path of the value
// ("model.merges[12]") and says what was expected, so a malformed file gives one readable distill::Error.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "distill/core/error.hpp"

namespace distill::text::detail {

using Json = nlohmann::json;

// A value together with the file it came from and its path inside the document.
struct JsonRef {
  const Json* v;
  const std::string* file;
  std::string path;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("tokenizer.json '" + *file + "': " + (path.empty() ? std::string("<root>") : path) + ": " + what);
  }
  const Json& operator*() const { return *v; }
  const Json* operator->() const { return v; }

  static const char* type_name(const Json& j) {
    switch (j.type()) {
      case Json::value_t::null:
        return "null";
      case Json::value_t::object:
        return "an object";
      case Json::value_t::array:
        return "an array";
      case Json::value_t::string:
        return "a string";
      case Json::value_t::boolean:
        return "a boolean";
      case Json::value_t::number_integer:
      case Json::value_t::number_unsigned:
        return "an integer";
      case Json::value_t::number_float:
        return "a float";
      default:
        return "an unsupported value";
    }
  }
  [[noreturn]] void wrong_type(const char* expected) const {
    fail(std::string("expected ") + expected + ", found " + type_name(*v));
  }

  bool is_null() const { return v->is_null(); }
  bool has(const char* key) const { return v->is_object() && v->contains(key); }

  JsonRef at(const char* key) const {
    if (!v->is_object()) wrong_type("an object");
    auto it = v->find(key);
    if (it == v->end()) fail(std::string("missing key \"") + key + "\"");
    return {&*it, file, path.empty() ? std::string(key) : path + "." + key};
  }
  // A key that may be absent; absent (or null when null_is_absent) gives a null ref.
  JsonRef opt(const char* key) const {
    static const Json null_value;
    if (!v->is_object()) wrong_type("an object");
    auto it = v->find(key);
    const std::string p = path.empty() ? std::string(key) : path + "." + key;
    if (it == v->end()) return {&null_value, file, p};
    return {&*it, file, p};
  }
  JsonRef at(size_t i) const {
    if (!v->is_array()) wrong_type("an array");
    if (i >= v->size()) fail("index " + std::to_string(i) + " out of range");
    return {&(*v)[i], file, path + "[" + std::to_string(i) + "]"};
  }
  // This value, checked to be an array.
  const JsonRef& array() const {
    if (!v->is_array()) wrong_type("an array");
    return *this;
  }
  size_t size() const {
    if (!v->is_array() && !v->is_object()) wrong_type("an array or object");
    return v->size();
  }

  const std::string& str() const {
    if (!v->is_string()) wrong_type("a string");
    return v->get_ref<const std::string&>();
  }
  bool boolean() const {
    if (!v->is_boolean()) wrong_type("a boolean");
    return v->get<bool>();
  }
  // A non-negative integer that fits in int32 (token ids, counts).
  int32_t id() const {
    if (v->is_number_unsigned()) {
      const uint64_t x = v->get<uint64_t>();
      if (x > static_cast<uint64_t>(INT32_MAX)) fail("id " + std::to_string(x) + " is out of range (max 2^31-1)");
      return static_cast<int32_t>(x);
    }
    if (v->is_number_integer()) {
      const int64_t x = v->get<int64_t>();
      if (x < 0 || x > INT32_MAX) fail("id " + std::to_string(x) + " is out of range");
      return static_cast<int32_t>(x);
    }
    wrong_type("a non-negative integer");
  }
  uint64_t uint() const {
    if (v->is_number_unsigned()) return v->get<uint64_t>();
    if (v->is_number_integer() && v->get<int64_t>() >= 0) return static_cast<uint64_t>(v->get<int64_t>());
    wrong_type("a non-negative integer");
  }
  double number() const {
    if (!v->is_number()) wrong_type("a number");
    return v->get<double>();
  }
  bool opt_bool(const char* key, bool dflt) const {
    JsonRef r = opt(key);
    return r.is_null() ? dflt : r.boolean();
  }
  // "type" of a component object.
  const std::string& type() const { return at("type").str(); }
};

}  // namespace distill::text::detail
