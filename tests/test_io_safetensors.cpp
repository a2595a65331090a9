// safetensors: byte equality with files written by the Python package, reading them back, round trips of
// every dtype, sharded checkpoints, and every malformed case (each error names the file and the tensor).
// Fixtures: tools/golden/export_safetensors_fixtures.py -> tests/golden/safetensors/.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "distill/io/safetensors.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::io;
namespace fs = std::filesystem;

using test::TempDir;

namespace {

std::vector<uint8_t> file_bytes(const std::string& path) {
  const std::string s = read_file(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::vector<uint8_t> from_hex(const std::string& h) {
  std::vector<uint8_t> out(h.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoi(h.substr(2 * i, 2), nullptr, 16));
  return out;
}

const nlohmann::json& manifest() {
  static const nlohmann::json m = nlohmann::json::parse(read_file(test::golden_path("safetensors/manifest.json")));
  return m;
}

StDtype dtype_of(const std::string& s) {
  StDtype d{};
  REQUIRE(dtype_from_name(s, d));
  return d;
}

// The message of the distill::Error that f throws ("" and a failed check when it throws nothing).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL_CHECK("expected a distill::Error");
  return "";
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write_text(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

// A safetensors file from header JSON text and data bytes.
std::vector<uint8_t> raw_file(const std::string& header, const std::string& data = "") {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(s.data(), &n, 8);
  s += header;
  s += data;
  return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace

TEST_CASE("safetensors: dtype names, sizes and the reference's order") {
  const char* names[] = {"BOOL",        "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                         "F8_E5M2FNUZ", "I16", "U16", "F16",     "BF16",    "I32",     "U32",
                         "F32",         "C64", "F64", "I64",     "U64"};
  const size_t sizes[] = {1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 8};
  for (size_t i = 0; i < std::size(names); ++i) {
    StDtype d{};
    REQUIRE(dtype_from_name(names[i], d));
    CHECK(static_cast<size_t>(d) == i);
    CHECK(std::string(dtype_name(d)) == names[i]);
    CHECK(dtype_size(d) == sizes[i]);
  }
  StDtype d{};
  CHECK_FALSE(dtype_from_name("f32", d));
  CHECK_FALSE(dtype_from_name("F4", d));
  CHECK(st_dtype_of<bf16>() == StDtype::BF16);
  CHECK(st_dtype_of<uint8_t>() == StDtype::U8);
}

TEST_CASE("safetensors: serialize gives the Python package's bytes") {
  for (const auto& item : manifest()["files"].items()) {
    const std::string file = item.key();
    const auto& desc = item.value();
    CAPTURE(file);
    const auto expected = file_bytes(test::golden_path("safetensors/" + file));
    // Owned data, handed over in reverse order so that the writer's own ordering is what is tested.
    std::vector<std::vector<uint8_t>> data;
    for (const auto& t : desc["tensors"]) data.push_back(from_hex(t["hex"]));
    std::vector<TensorRef> refs;
    for (size_t i = desc["tensors"].size(); i-- > 0;) {
      const auto& t = desc["tensors"][i];
      refs.push_back({t["name"], dtype_of(t["dtype"]), t["shape"].get<std::vector<int64_t>>(), data[i]});
    }
    std::map<std::string, std::string> md;
    if (!desc["metadata"].is_null()) md = desc["metadata"].get<std::map<std::string, std::string>>();
    const auto got = serialize_safetensors(refs, md);
    CHECK(got.size() == expected.size());
    CHECK(got == expected);
  }
  // The reference's own examples (SPEC §3.1).
  const float v[6] = {0, 1, 2, 3, 4, 5};
  const auto one =
      serialize_safetensors({{"attn.0", StDtype::F32, {1, 2, 3}, std::span(reinterpret_cast<const uint8_t*>(v), 24)}});
  CHECK(one.size() == 8 + 64 + 24);
  CHECK(one[0] == 64);
  const std::string js = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  CHECK(std::string(one.begin() + 8, one.begin() + 72) == js + std::string(64 - js.size(), ' '));
  const auto none = serialize_safetensors({});
  CHECK(std::string(none.begin() + 8, none.end()) == "{}      ");
}

TEST_CASE("safetensors: reads Python-written files") {
  for (const auto& item : manifest()["files"].items()) {
    const std::string file = item.key();
    const auto& desc = item.value();
    CAPTURE(file);
    const auto f = SafetensorsFile::open(test::golden_path("safetensors/" + file));
    REQUIRE(f.tensors().size() == desc["tensors"].size());
    if (desc["metadata"].is_null())
      CHECK(f.metadata().empty());
    else
      CHECK(f.metadata() == desc["metadata"].get<std::map<std::string, std::string>>());
    // tensors() is in data order: dtype descending, then name.
    for (size_t i = 1; i < f.tensors().size(); ++i) {
      const auto &a = f.tensors()[i - 1], &b = f.tensors()[i];
      CHECK((a.dtype > b.dtype || (a.dtype == b.dtype && a.name < b.name)));
      CHECK(a.end == b.begin);
    }
    for (const auto& t : desc["tensors"]) {
      const std::string name = t["name"];
      CAPTURE(name);
      const TensorInfo* info = f.find(name);
      REQUIRE(info);
      CHECK(info->dtype == dtype_of(t["dtype"]));
      CHECK(info->shape == t["shape"].get<std::vector<int64_t>>());
      const auto raw = from_hex(t["hex"]);
      const auto b = f.bytes(name);
      CHECK(std::vector<uint8_t>(b.begin(), b.end()) == raw);
      CHECK(info->nbytes() == raw.size());
      if (t["values"].is_null()) continue;
      const auto& vals = t["values"];
      CHECK(info->numel() == static_cast<int64_t>(vals.size()));
      const std::string dt = t["dtype"];
      if (dt == "F64" || dt == "F32" || dt == "F16" || dt == "BF16") {
        const auto x = f.load<double>(name);  // exact: every stored float is a double
        CHECK(x.shape() == Shape::from_range(info->shape.begin(), info->shape.end()));
        for (size_t i = 0; i < vals.size(); ++i) CHECK(x.data()[i] == vals[i].get<double>());
        const auto y = f.load<float>(name);
        for (size_t i = 0; i < vals.size(); ++i) CHECK(y.data()[i] == static_cast<float>(vals[i].get<double>()));
      } else if (dt == "U64" && vals.size() > 1) {
        CHECK_THROWS_WITH_AS(f.load<int64_t>(name), doctest::Contains("does not fit in i64"), Error);
      } else {
        const auto x = f.load<int64_t>(name);
        for (size_t i = 0; i < vals.size(); ++i) CHECK(x.data()[i] == vals[i].get<int64_t>());
      }
    }
  }
}

TEST_CASE("safetensors: loads convert with the reference's rounding") {
  const auto& r = manifest()["rounding"];
  const auto f = SafetensorsFile::open(test::golden_path("safetensors/rounding.safetensors"));
  const auto h64 = f.load<f16>("f64"), h32 = f.load<f16>("f32");
  const auto s64 = f.load<float>("f64");
  const auto b32 = f.load<bf16>("f32");
  REQUIRE(h64.numel() == static_cast<int64_t>(r["f64_to_f16_bits"].size()));
  for (int64_t i = 0; i < h64.numel(); ++i) {
    CAPTURE(i);
    CHECK(bits_of(h64.data()[i]) == r["f64_to_f16_bits"][i].get<uint16_t>());  // one rounding, not two
    CHECK(bits_of(h32.data()[i]) == r["f32_to_f16_bits"][i].get<uint16_t>());
    CHECK(s64.data()[i] == static_cast<float>(r["f64_to_f32"][i].get<double>()));
    CHECK(bits_of(b32.data()[i]) == r["f32_to_bf16_bits"][i].get<uint16_t>());
  }
  // Loads between kinds are refused, naming the file and tensor.
  const auto d = SafetensorsFile::open(test::golden_path("safetensors/dtypes.safetensors"));
  const std::string msg = error_of([&] { d.load<float>("t_i64"); });
  CHECK(contains(msg, "dtypes.safetensors"));
  CHECK(contains(msg, "\"t_i64\""));
  CHECK(contains(msg, "cannot load I64 data as f32"));
  CHECK_THROWS_WITH_AS(d.load<int32_t>("t_f32"), doctest::Contains("cannot load F32 data as i32"), Error);
  CHECK_THROWS_WITH_AS(d.load<float>("t_f8_e4m3"), doctest::Contains("cannot load F8_E4M3 data as f32 (no conversion"),
                       Error);
  CHECK_THROWS_WITH_AS(d.info("nope"), doctest::Contains("tensor \"nope\": no such tensor"), Error);
  CHECK_THROWS_WITH_AS(d.bytes("nope"), doctest::Contains("dtypes.safetensors"), Error);
  CHECK(d.find("nope") == nullptr);
  CHECK(d.load<uint8_t>("t_bool").numel() == 6);
}

TEST_CASE("safetensors: round trip of every tensor dtype, scalars and zero sizes") {
  TempDir tmp;
  SafetensorsWriter w;
  const auto f32 = Tensor<float>::uniform({2, 3}, 1);
  const auto f64 = Tensor<double>::uniform({4}, 2);
  const auto b16 = Tensor<bf16>::uniform({3, 1, 2}, 3);
  const auto h16 = Tensor<f16>::uniform({5}, 4);
  const auto i32 = Tensor<int32_t>::from_vector({}, {-7});
  const auto i64 = Tensor<int64_t>::from_vector({3}, {INT64_MIN, 0, INT64_MAX});
  const auto u8 = Tensor<uint8_t>::from_vector({2, 2}, {0, 1, 254, 255});
  const auto empty = Tensor<float>::empty({0, 4});
  const auto big = Tensor<float>::uniform({8, 6}, 5);
  const auto view = big.transpose(0, 1).slice(0, 1, 4);  // non-contiguous: written as its contiguous copy
  w.add("f32", f32);
  w.add("f64", f64);
  w.add("bf16", b16);
  w.add("f16", h16);
  w.add("i32", i32);
  w.add("i64", i64);
  w.add("u8", u8);
  w.add("empty", empty);
  w.add("view", view);
  w.add_bytes("bool", StDtype::BOOL, {3}, {1, 0, 1});
  w.add_bytes("f8", StDtype::F8_E4M3, {2}, {0x38, 0xb8});
  w.add_bytes("u64", StDtype::U64, {}, {1, 0, 0, 0, 0, 0, 0, 0});
  w.add_bytes("c64", StDtype::C64, {0}, {});
  w.set_metadata("format", "pt");
  const std::string path = tmp / "rt.safetensors";
  w.save(path);
  CHECK(file_bytes(path) == w.serialize());

  const auto f = SafetensorsFile::open(path);
  CHECK(f.tensors().size() == 13);
  CHECK(f.metadata().at("format") == "pt");
  auto same = [](const auto& a, const auto& b) {
    REQUIRE(a.shape() == b.shape());
    for (int64_t i = 0; i < a.numel(); ++i) CHECK(a.flat(i) == b.flat(i));
  };
  same(f.load<float>("f32"), f32);
  same(f.load<double>("f64"), f64);
  same(f.load<bf16>("bf16"), b16);
  same(f.load<f16>("f16"), h16);
  same(f.load<int32_t>("i32"), i32);
  same(f.load<int64_t>("i64"), i64);
  same(f.load<uint8_t>("u8"), u8);
  same(f.load<float>("empty"), empty);
  same(f.load<float>("view"), view);
  CHECK(f.load<int32_t>("i32").rank() == 0);
  CHECK(f.load<int64_t>("u64").data()[0] == 1);
  CHECK(f.info("c64").nbytes() == 0);
  CHECK(f.info("f8").shape == std::vector<int64_t>{2});
  // Widening and narrowing loads.
  same(f.load<double>("bf16"), b16.cast<double>());
  same(f.load<bf16>("f64"), f64.cast<bf16>());
  same(f.load<int64_t>("u8"), u8.cast<int64_t>());
  CHECK_THROWS_WITH_AS(f.load<uint8_t>("i64"), doctest::Contains("element 0 of the I64 data does not fit in u8"),
                       Error);
  // Re-serializing what was read reproduces the file.
  std::vector<TensorRef> refs;
  for (const auto& t : f.tensors()) refs.push_back({t.name, t.dtype, t.shape, f.bytes(t)});
  CHECK(serialize_safetensors(refs, f.metadata()) == file_bytes(path));
}

TEST_CASE("safetensors: sharded checkpoint written like transformers") {
  const auto& sh = manifest()["sharded"];
  const std::string dir = test::golden_path("safetensors/sharded");
  for (const std::string& p : {dir, dir + "/model.safetensors.index.json"}) {
    CAPTURE(p);
    const auto c = Checkpoint::open(p);
    CHECK(c.num_shards() == 2);
    CHECK(c.tensors().size() == sh["num_tensors"].get<size_t>());
    CHECK(c.total_parameters() == sh["total_parameters"].get<int64_t>());
    CHECK(c.total_bytes() == sh["total_bytes"].get<uint64_t>());
    CHECK(contains(c.shard(0).path(), "model-00001-of-00002.safetensors"));
    for (const auto& [shard, desc] : sh["shards"].items()) {
      CHECK(c.shard(shard == "model-00001-of-00002.safetensors" ? 0 : 1).tensors().size() == desc["tensors"].size());
      CHECK(c.shard(0).metadata().at("format") == "pt");
      for (const auto& t : desc["tensors"]) {
        const std::string name = t["name"];
        CAPTURE(name);
        REQUIRE(c.find(name));
        CHECK(contains(c.shard_of(name).path(), shard));
        const auto b = c.bytes(name);
        CHECK(std::vector<uint8_t>(b.begin(), b.end()) == from_hex(t["hex"]));
        const auto x = c.load<float>(name);
        CHECK(x.shape() == Shape::from_range(c.info(name).shape.begin(), c.info(name).shape.end()));
        for (size_t i = 0; i < t["values"].size(); ++i) CHECK(x.data()[i] == t["values"][i].get<double>());
      }
    }
    CHECK(c.find("lm_head.weight") == nullptr);
    CHECK_THROWS_WITH_AS(c.load<float>("lm_head.weight"), doctest::Contains("tensor \"lm_head.weight\""), Error);
  }
  // A single file, and a directory with model.safetensors.
  const auto single = Checkpoint::open(test::golden_path("safetensors/dtypes.safetensors"));
  CHECK(single.num_shards() == 1);
  CHECK(single.tensors().size() == manifest()["files"]["dtypes.safetensors"]["tensors"].size());
  TempDir tmp;
  fs::copy_file(test::golden_path("safetensors/order.safetensors"), tmp / "model.safetensors");
  const auto d = Checkpoint::open(tmp.path.string());
  CHECK(d.tensors().size() == 10);
  CHECK(d.total_parameters() == 1 + 2 + 3 + 1 + 2 + 3 + 1 + 2 + 3 + 1);
}

TEST_CASE("safetensors: every malformed file gives one error naming the file and tensor") {
  struct Case {
    const char* file;
    const char* expect;
    const char* tensor;  // quoted in the message, or nullptr
  };
  const Case cases[] = {
      {"too_short", "too short for the 8-byte header length", nullptr},
      {"header_too_big", "header length 100000001 exceeds the limit", nullptr},
      {"header_past_eof", "header length 1000 runs past the end", nullptr},
      {"not_utf8", "header is not valid UTF-8 (byte 3", nullptr},
      {"bom", "byte-order mark", nullptr},
      {"bad_json", "header is not valid JSON", nullptr},
      {"nul_padding", "header holds a NUL byte (byte 53", nullptr},
      {"not_object", "header must be a JSON object, found array", nullptr},
      {"entry_not_object", "entry must be an object, found number", "w"},
      {"missing_dtype", "missing field \"dtype\"", "w"},
      {"missing_shape", "missing field \"shape\"", "w"},
      {"missing_offsets", "missing field \"data_offsets\"", "w"},
      {"extra_field", "unexpected field \"offsets\"", "w"},
      {"dtype_not_string", "dtype must be a string", "w"},
      {"unknown_dtype", "unknown dtype \"X9\"", "w"},
      {"lowercase_dtype", "unknown dtype \"u8\"", "w"},
      {"sub_byte_dtype", "sub-byte dtype F4 is not supported", "w"},
      {"shape_not_array", "shape must be an array", "w"},
      {"negative_dim", "shape entries must be non-negative integers, found a negative number", "w"},
      {"float_dim", "shape entries must be non-negative integers, found a non-integer number", "w"},
      {"shape_overflow", "overflows the byte size", "w"},
      {"offsets_three", "data_offsets must be an array of two integers", "w"},
      {"offsets_negative", "data_offsets must be non-negative integers", "w"},
      {"offsets_float", "data_offsets must be non-negative integers", "w"},
      {"begin_after_end", "end before they begin", "w"},
      {"size_mismatch", "hold 2 bytes but shape [3] of U8 needs 3", "w"},
      {"overlap", "overlap tensor \"w\"", "v"},
      {"hole_at_start", "the first tensor must begin at 0", "w"},
      {"hole_between", "a hole in the data buffer", "v"},
      {"zero_size_hole", "a hole in the data buffer", "v"},
      {"trailing_bytes", "1 trailing bytes after the last tensor", "w"},
      {"truncated_data", "run past the end of the data buffer (2 bytes): truncated file?", "w"},
      {"duplicate_tensor", "has the key \"w\" twice", "w"},
      {"duplicate_field", "has the key \"dtype\" twice (inside \"w\")", "w"},
      {"metadata_not_object", "__metadata__ must be an object of strings, found array", nullptr},
      {"metadata_value_not_string", "__metadata__ value of \"format\" must be a string, found number", nullptr},
      {"metadata_duplicate_key", "has the key \"a\" twice (inside \"__metadata__\")", nullptr},
      {"deep_nesting", "nests deeper than 8 levels", nullptr},
  };
  // The table covers exactly the malformed files the exporter wrote.
  std::set<std::string> in_table, in_manifest;
  for (const auto& c : cases) in_table.insert(c.file);
  for (const auto& [k, v] : manifest()["bad"].items()) in_manifest.insert(k);
  CHECK(in_table == in_manifest);

  for (const auto& c : cases) {
    const std::string file = c.file;
    CAPTURE(file);
    const std::string path = test::golden_path(std::string("safetensors/bad/") + c.file + ".safetensors");
    const std::string msg = error_of([&] { SafetensorsFile::open(path); });
    CHECK(contains(msg, path + ": "));
    CHECK(contains(msg, c.expect));
    if (c.tensor) CHECK(contains(msg, std::string("\"") + c.tensor + "\""));
    // The pure parser gives the same message for the same bytes.
    const auto bytes = file_bytes(path);
    CHECK_THROWS_WITH_AS(parse_safetensors(bytes, "mem.safetensors"), doctest::Contains(c.expect), Error);
  }
}

TEST_CASE("safetensors: edge cases the reference accepts") {
  auto parse = [](const std::vector<uint8_t>& b) { return parse_safetensors(b, "x.safetensors"); };
  // Header length not a multiple of 8, leading whitespace, "__metadata__": null, trailing spaces.
  const auto h = parse(
      raw_file(" \n{\"__metadata__\":null,\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}  ", "ab"));
  REQUIRE(h.tensors.size() == 1);
  CHECK(h.metadata.empty());
  CHECK(h.tensors[0].numel() == 2);
  // Zero-size tensors at the same offset as others; a scalar; key order in the header does not matter.
  const auto z = parse(raw_file(
      R"({"s":{"dtype":"F32","shape":[],"data_offsets":[2,6]},"e":{"dtype":"F64","shape":[0,5],"data_offsets":[2,2]},"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
      std::string(6, '\0')));
  REQUIRE(z.tensors.size() == 3);
  CHECK(z.tensors[0].name == "w");
  CHECK(z.tensors[1].name == "e");
  CHECK(z.tensors[2].name == "s");
  CHECK(z.find("s")->numel() == 1);
  CHECK(z.find("e")->numel() == 0);
  CHECK(z.data_start == 8 + z.header_size);
  // Empty metadata map; exactly 8 bytes; no tensors.
  CHECK(parse(raw_file(R"({"__metadata__":{}})")).tensors.empty());
  CHECK_THROWS_WITH_AS(parse({}), doctest::Contains("x.safetensors: file is 0 bytes"), Error);
  CHECK_THROWS_WITH_AS(parse(raw_file("")), doctest::Contains("not valid JSON"), Error);
  CHECK_THROWS_WITH_AS(parse(raw_file("{}", "z")), doctest::Contains("1 trailing bytes"), Error);
}

TEST_CASE("safetensors: malformed checkpoints") {
  TempDir tmp;
  const auto shard_a = serialize_safetensors(
      {{"a", StDtype::U8, {1}, std::vector<uint8_t>{1}}, {"x", StDtype::U8, {1}, std::vector<uint8_t>{2}}});
  const auto shard_b = serialize_safetensors(
      {{"b", StDtype::U8, {1}, std::vector<uint8_t>{3}}, {"x", StDtype::U8, {1}, std::vector<uint8_t>{4}}});
  auto checkpoint = [&](const std::string& name, const std::string& index) {
    fs::create_directories(tmp.path / name);
    write_bytes(tmp / (name + "/s1.safetensors"), shard_a);
    write_bytes(tmp / (name + "/s2.safetensors"), shard_b);
    write_text(tmp / (name + "/model.safetensors.index.json"), index);
    return tmp / (name + "/model.safetensors.index.json");
  };
  auto expect = [&](const std::string& index_path, const std::string& what, const std::string& tensor) {
    const std::string msg = error_of([&] { Checkpoint::open(index_path); });
    CHECK(contains(msg, index_path + ": "));
    CHECK(contains(msg, what));
    if (!tensor.empty()) CHECK(contains(msg, "tensor \"" + tensor + "\""));
  };
  expect(checkpoint("two", R"({"weight_map":{"a":"s1.safetensors","x":"s1.safetensors","b":"s2.safetensors"}})"),
         "present in shard \"s2.safetensors\" but the index puts it in \"s1.safetensors\" (a tensor in two shards)",
         "x");
  expect(checkpoint("absent", R"({"weight_map":{"a":"s1.safetensors","x":"s1.safetensors","y":"s1.safetensors"}})"),
         "listed in the index for shard \"s1.safetensors\" but absent from that file", "y");
  expect(checkpoint("missing", R"({"weight_map":{"a":"s1.safetensors","q":"s9.safetensors"}})"),
         "shard \"s9.safetensors\" listed for this tensor is missing", "q");
  expect(checkpoint("unlisted", R"({"weight_map":{"a":"s1.safetensors"}})"),
         "present in shard \"s1.safetensors\" but not in the index", "x");
  expect(checkpoint("traversal", R"({"weight_map":{"a":"../traversal/s1.safetensors"}})"),
         "shard name \"../traversal/s1.safetensors\" must be a plain file name", "a");
  expect(checkpoint("dotdot", R"({"weight_map":{"a":".."}})"), "must be a plain file name", "a");
  expect(checkpoint("absolute", R"({"weight_map":{"a":"/etc/passwd"}})"), "must be a plain file name", "a");
  expect(checkpoint("backslash", R"({"weight_map":{"a":"..\\s1.safetensors"}})"), "must be a plain file name", "a");
  expect(checkpoint("notjson", R"({"weight_map":)"), "index is not valid JSON", "");
  expect(checkpoint("array", R"([])"), "index must be a JSON object", "");
  expect(checkpoint("nomap", R"({"metadata":{"total_size":3}})"), "missing \"weight_map\"", "");
  expect(checkpoint("emptymap", R"({"weight_map":{}})"), "\"weight_map\" is empty", "");
  expect(checkpoint("mapnotobj", R"({"weight_map":["s1.safetensors"]})"), "\"weight_map\" must be an object", "");
  expect(checkpoint("valuenotstr", R"({"weight_map":{"a":1}})"), "weight_map value must be a shard file name", "a");
  expect(checkpoint("dupkey", R"({"weight_map":{"a":"s1.safetensors","a":"s2.safetensors"}})"),
         "has the key \"a\" twice", "");
  // A corrupt shard names the shard file.
  fs::create_directories(tmp.path / "corrupt");
  write_bytes(tmp / "corrupt/s1.safetensors", {1, 2, 3});
  write_text(tmp / "corrupt/model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
  CHECK_THROWS_WITH_AS(Checkpoint::open(tmp / "corrupt"), doctest::Contains("corrupt/s1.safetensors: file is 3 bytes"),
                       Error);
  // An empty directory; a missing file.
  fs::create_directories(tmp.path / "none");
  CHECK_THROWS_WITH_AS(Checkpoint::open(tmp / "none"),
                       doctest::Contains("no model.safetensors or model.safetensors.index.json"), Error);
  CHECK_THROWS_WITH_AS(SafetensorsFile::open(tmp / "nope.safetensors"),
                       doctest::Contains("nope.safetensors: cannot open"), Error);
  // The good layout of the same shards opens.
  const auto ok = Checkpoint::open(checkpoint("ok", R"({"weight_map":{"a":"s1.safetensors","x":"s1.safetensors"}})"));
  CHECK(ok.num_shards() == 1);
}

TEST_CASE("safetensors: the writer refuses what it cannot write faithfully") {
  const std::vector<uint8_t> one{1}, two{1, 2};
  CHECK_THROWS_WITH_AS(serialize_safetensors({{"a", StDtype::U8, {1}, one}, {"a", StDtype::I8, {1}, one}}),
                       doctest::Contains("tensor \"a\" is given twice"), Error);
  CHECK_THROWS_WITH_AS(serialize_safetensors({{"__metadata__", StDtype::U8, {1}, one}}),
                       doctest::Contains("may not be named \"__metadata__\""), Error);
  CHECK_THROWS_WITH_AS(serialize_safetensors({{"a", StDtype::F32, {1}, two}}),
                       doctest::Contains("tensor \"a\" has 2 bytes of data but its shape and dtype F32 need 4"), Error);
  CHECK_THROWS_WITH_AS(serialize_safetensors({{"a", StDtype::U8, {-1}, one}}), doctest::Contains("negative extent"),
                       Error);
  CHECK_THROWS_WITH_AS(serialize_safetensors({{"bad\xff", StDtype::U8, {1}, one}}),
                       doctest::Contains("is not valid UTF-8"), Error);
  CHECK_THROWS_WITH_AS(serialize_safetensors({}, {{"k", "\xc0\x80"}}), doctest::Contains("metadata value"), Error);
}

TEST_CASE("safetensors: empty tensors whose other dims multiply past int64 are refused") {
  // The reference accepts these (its element count is 0), but numel(), strides and partial products over the
  // non-zero dims would overflow int64 here; no real checkpoint has such a shape.
  auto parse = [](const std::string& shape) {
    return parse_safetensors(raw_file("{\"e\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[0,0]}}"),
                             "x.safetensors");
  };
  CHECK_THROWS_WITH_AS(parse("[3,4611686018427387904,0]"), doctest::Contains("\"e\""), Error);
  CHECK_THROWS_WITH_AS(parse("[0,9223372036854775807,9223372036854775807]"), doctest::Contains("overflows"), Error);
  CHECK(parse("[0,9223372036854775807]").tensors[0].numel() == 0);
}
