// safetensors files and Hugging Face checkpoints (SPEC §3): an mmap-backed reader for one file, a checkpoint
// (a single model.safetensors or shards listed by model.safetensors.index.json), typed loads into Tensor<T>,
// and a writer that collects tensors and saves them atomically with the Python package's exact bytes.
// Every file is validated when opened (safetensors_format.hpp); errors name the file and the tensor.
#pragma once
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/io/file.hpp"
#include "distill/io/safetensors_format.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::io {

// The safetensors dtype a Tensor<T> is written as.
template <class T>
constexpr StDtype st_dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return StDtype::F32;
  else if constexpr (std::is_same_v<T, double>)
    return StDtype::F64;
  else if constexpr (std::is_same_v<T, bf16>)
    return StDtype::BF16;
  else if constexpr (std::is_same_v<T, f16>)
    return StDtype::F16;
  else if constexpr (std::is_same_v<T, int32_t>)
    return StDtype::I32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return StDtype::I64;
  else if constexpr (std::is_same_v<T, uint8_t>)
    return StDtype::U8;
  else
    static_assert(sizeof(T) == 0, "no safetensors dtype for this element type");
}

namespace detail {

template <class S>
inline S read_le(const uint8_t* p) {
  S v;
  std::memcpy(&v, p, sizeof(S));
  return v;
}

// Converts n stored elements of type S to T, as Tensor::cast does (round to nearest even; f64 -> 16-bit
// rounds once).
template <class S, class T>
inline void convert_float(const uint8_t* src, T* dst, int64_t n) {
  parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      S v;
      if constexpr (std::is_same_v<S, bf16>)
        v = bf16_from_bits(read_le<uint16_t>(src + 2 * i));
      else if constexpr (std::is_same_v<S, f16>)
        v = f16_from_bits(read_le<uint16_t>(src + 2 * i));
      else
        v = read_le<S>(src + sizeof(S) * i);
      if constexpr (std::is_same_v<S, double> && (std::is_same_v<T, bf16> || std::is_same_v<T, f16>))
        dst[i] = static_cast<T>(distill::detail::f64_to_f32_round_to_odd(v));
      else
        dst[i] = static_cast<T>(static_cast<compute_t<T>>(to_compute<S>(v)));
    }
  });
}

// Integer to integer, with a range check on every element. Returns the index of the first element out of
// range for T, or -1.
template <class S, class T>
inline int64_t convert_int(const uint8_t* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const S v = read_le<S>(src + sizeof(S) * i);
    if (!std::in_range<T>(v)) return i;
    dst[i] = static_cast<T>(v);
  }
  return -1;
}

template <class T>
inline Tensor<T> tensor_from_bytes(const TensorInfo& info, std::span<const uint8_t> bytes, std::string_view file) {
  if (info.shape.size() > static_cast<size_t>(kMaxRank))
    st_fail_tensor(file, info.name,
                   "rank " + std::to_string(info.shape.size()) + " exceeds the maximum of " + std::to_string(kMaxRank));
  const Shape shape = Shape::from_range(info.shape.begin(), info.shape.end());
  auto out = Tensor<T>::empty(shape);
  const int64_t n = shape.numel();
  const uint8_t* src = bytes.data();
  auto cannot = [&]() {
    const StDtype d = info.dtype;
    const bool is_float = d == StDtype::F64 || d == StDtype::F32 || d == StDtype::F16 || d == StDtype::BF16;
    const bool is_int = !is_float && d != StDtype::C64 && (d < StDtype::F8_E5M2 || d > StDtype::F8_E5M2FNUZ);
    st_fail_tensor(file, info.name,
                   std::string("cannot load ") + dtype_name(d) + " data as " + dtype_name_v<T> +
                       (is_float ? " (floats load as f32, f64, bf16 or f16)"
                        : is_int ? " (integers load as i32, i64 or u8)"
                                 : " (no conversion for this dtype; read its bytes())"));
  };
  if (info.dtype == st_dtype_of<T>()) {
    if (n > 0) std::memcpy(out.data(), src, bytes.size());
    return out;
  }
  if constexpr (is_floating_dtype_v<T>) {
    switch (info.dtype) {
      case StDtype::F64:
        convert_float<double>(src, out.data(), n);
        break;
      case StDtype::F32:
        convert_float<float>(src, out.data(), n);
        break;
      case StDtype::F16:
        convert_float<f16>(src, out.data(), n);
        break;
      case StDtype::BF16:
        convert_float<bf16>(src, out.data(), n);
        break;
      default:
        cannot();
    }
  } else {
    int64_t bad = -1;
    switch (info.dtype) {
      case StDtype::BOOL:
      case StDtype::U8:
        bad = convert_int<uint8_t>(src, out.data(), n);
        break;
      case StDtype::I8:
        bad = convert_int<int8_t>(src, out.data(), n);
        break;
      case StDtype::I16:
        bad = convert_int<int16_t>(src, out.data(), n);
        break;
      case StDtype::U16:
        bad = convert_int<uint16_t>(src, out.data(), n);
        break;
      case StDtype::I32:
        bad = convert_int<int32_t>(src, out.data(), n);
        break;
      case StDtype::U32:
        bad = convert_int<uint32_t>(src, out.data(), n);
        break;
      case StDtype::I64:
        bad = convert_int<int64_t>(src, out.data(), n);
        break;
      case StDtype::U64:
        bad = convert_int<uint64_t>(src, out.data(), n);
        break;
      default:
        cannot();
    }
    if (bad >= 0)
      st_fail_tensor(file, info.name,
                     "element " + std::to_string(bad) + " of the " + dtype_name(info.dtype) + " data does not fit in " +
                         dtype_name_v<T>);
  }
  return out;
}

}  // namespace detail

// One safetensors file, memory-mapped and validated on open.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path) {
    SafetensorsFile f;
    f.map_ = MappedFile(path);
    f.header_ = parse_safetensors(f.map_.bytes(), path);
    return f;
  }

  const std::string& path() const { return map_.path(); }
  // All tensors in data order.
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsHeader& header() const { return header_; }

  const TensorInfo* find(std::string_view name) const { return header_.find(name); }
  const TensorInfo& info(std::string_view name) const {
    const TensorInfo* t = find(name);
    if (!t) detail::st_fail_tensor(path(), name, "no such tensor in this file");
    return *t;
  }
  // The tensor's raw bytes (little-endian, row-major), valid while this object lives.
  std::span<const uint8_t> bytes(const TensorInfo& t) const {
    return map_.bytes().subspan(header_.data_start + t.begin, t.nbytes());
  }
  std::span<const uint8_t> bytes(std::string_view name) const { return bytes(info(name)); }

  // A copy of the tensor converted to T (floats to floats with round-to-nearest-even, integers to integers
  // with a range check), shaped as in the file.
  template <class T>
  Tensor<T> load(std::string_view name) const {
    const TensorInfo& t = info(name);
    return detail::tensor_from_bytes<T>(t, bytes(t), path());
  }

 private:
  MappedFile map_;
  SafetensorsHeader header_;
};

// A model's weights: one safetensors file, or the shards of model.safetensors.index.json (SPEC §3.2).
class Checkpoint {
 public:
  // `path`: a directory (model.safetensors is used when present, else model.safetensors.index.json, as
  // transformers does), an index .json file, or a single .safetensors file.
  static Checkpoint open(const std::string& path) {
    namespace fs = std::filesystem;
    const fs::path p(path);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      if (fs::exists(p / "model.safetensors", ec)) return open_single((p / "model.safetensors").string());
      if (fs::exists(p / "model.safetensors.index.json", ec))
        return open_index((p / "model.safetensors.index.json").string());
      throw Error(path + ": no model.safetensors or model.safetensors.index.json in this directory");
    }
    if (p.extension() == ".json") return open_index(path);
    return open_single(path);
  }

  // All tensors: shard by shard (shards in file-name order), each in data order.
  const std::vector<const TensorInfo*>& tensors() const { return order_; }
  size_t num_shards() const { return shards_.size(); }
  const SafetensorsFile& shard(size_t i) const { return shards_[i]; }
  // The index file, or the single safetensors file.
  const std::string& path() const { return path_; }

  const TensorInfo* find(std::string_view name) const {
    const auto it = where_.find(name);
    return it == where_.end() ? nullptr : shards_[it->second].find(name);
  }
  const TensorInfo& info(std::string_view name) const { return shard_of(name).info(name); }
  // The shard holding `name`; throws naming the checkpoint and the tensor when there is none.
  const SafetensorsFile& shard_of(std::string_view name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) detail::st_fail_tensor(path_, name, "no such tensor in this checkpoint");
    return shards_[it->second];
  }
  std::span<const uint8_t> bytes(std::string_view name) const { return shard_of(name).bytes(name); }
  template <class T>
  Tensor<T> load(std::string_view name) const {
    return shard_of(name).template load<T>(name);
  }

  int64_t total_parameters() const {
    int64_t n = 0;
    for (const auto* t : order_) n += t->numel();
    return n;
  }
  uint64_t total_bytes() const {
    uint64_t n = 0;
    for (const auto* t : order_) n += t->nbytes();
    return n;
  }

 private:
  static Checkpoint open_single(const std::string& file) {
    Checkpoint c;
    c.path_ = file;
    c.shards_.push_back(SafetensorsFile::open(file));
    for (const auto& t : c.shards_[0].tensors()) {
      c.where_.emplace(t.name, 0);
      c.order_.push_back(&t);
    }
    return c;
  }

  static Checkpoint open_index(const std::string& index_path) {
    namespace fs = std::filesystem;
    Checkpoint c;
    c.path_ = index_path;
    const std::string text = read_file(index_path);
    const auto j = detail::parse_json_strict(text, index_path, "index", /*max_depth=*/16);
    auto fail = [&](const std::string& what) { detail::st_fail(index_path, what); };
    if (!j.is_object()) fail(std::string("index must be a JSON object, found ") + j.type_name());
    if (!j.contains("weight_map")) fail("missing \"weight_map\"");
    const auto& wm = j["weight_map"];
    if (!wm.is_object()) fail(std::string("\"weight_map\" must be an object, found ") + wm.type_name());
    if (wm.empty()) fail("\"weight_map\" is empty");

    const fs::path dir = fs::path(index_path).parent_path();
    std::map<std::string, size_t, std::less<>> shard_index;  // shard file name -> position in shards_
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string())
        detail::st_fail_tensor(
            index_path, it.key(),
            std::string("weight_map value must be a shard file name, found ") + it.value().type_name());
      const std::string& shard = it.value().get_ref<const std::string&>();
      // Shards are plain file names beside the index: no directories, no "..", no absolute paths.
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
          shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos)
        detail::st_fail_tensor(
            index_path, it.key(),
            "shard name " + detail::quote_name(shard) + " must be a plain file name in the checkpoint directory");
      auto [pos, inserted] = shard_index.emplace(shard, shard_index.size());
      if (inserted) {
        const fs::path sp = dir / shard;
        std::error_code ec;
        if (!fs::is_regular_file(sp, ec))
          detail::st_fail_tensor(
              index_path, it.key(),
              "shard " + detail::quote_name(shard) + " listed for this tensor is missing (" + sp.string() + ")");
      }
      c.where_.emplace(it.key(), pos->second);
    }
    // Open the shards in the order of their file names (model-00001-of-0000N first).
    std::vector<std::pair<std::string, size_t>> by_name(shard_index.begin(), shard_index.end());
    std::vector<size_t> remap(by_name.size());
    c.shards_.reserve(by_name.size());
    for (size_t i = 0; i < by_name.size(); ++i) {
      remap[by_name[i].second] = i;
      c.shards_.push_back(SafetensorsFile::open((dir / by_name[i].first).string()));
    }
    for (auto& [name, s] : c.where_) s = remap[s];

    // Every tensor of the index is in its shard; every tensor of a shard is in the index, for that shard.
    for (const auto& [name, s] : c.where_)
      if (!c.shards_[s].find(name))
        detail::st_fail_tensor(
            index_path, name,
            "listed in the index for shard " + detail::quote_name(by_name[s].first) + " but absent from that file");
    for (size_t s = 0; s < c.shards_.size(); ++s)
      for (const auto& t : c.shards_[s].tensors()) {
        const auto it = c.where_.find(t.name);
        if (it == c.where_.end())
          detail::st_fail_tensor(index_path, t.name,
                                 "present in shard " + detail::quote_name(by_name[s].first) + " but not in the index");
        if (it->second != s)
          detail::st_fail_tensor(index_path, t.name,
                                 "present in shard " + detail::quote_name(by_name[s].first) +
                                     " but the index puts it in " + detail::quote_name(by_name[it->second].first) +
                                     " (a tensor in two shards)");
        c.order_.push_back(&t);
      }
    return c;
  }

  std::string path_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor name -> shard
  std::vector<const TensorInfo*> order_;
};

// Collects tensors (without copying contiguous host tensors) and writes them as one safetensors file.
class SafetensorsWriter {
 public:
  template <class T>
  void add(std::string name, const Tensor<T>& t) {
    const Tensor<T> c = t.contiguous();
    TensorRef r{std::move(name), st_dtype_of<T>(), std::vector<int64_t>(c.shape().begin(), c.shape().end()),
                std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.data()), sizeof(T) * c.numel())};
    items_.push_back({std::move(r), c.storage()});
  }
  // Raw little-endian bytes of any dtype (e.g. NF4-packed U8 or BOOL masks).
  void add_bytes(std::string name, StDtype dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
    auto keep = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
    items_.push_back({TensorRef{std::move(name), dtype, std::move(shape), std::span<const uint8_t>(*keep)}, keep});
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  std::vector<uint8_t> serialize() const {
    std::vector<TensorRef> refs;
    refs.reserve(items_.size());
    for (const auto& it : items_) refs.push_back(it.ref);
    return serialize_safetensors(std::move(refs), metadata_);
  }
  void save(const std::string& path) const {
    const auto bytes = serialize();
    atomic_write(path, std::span<const uint8_t>(bytes));
  }

 private:
  struct Item {
    TensorRef ref;
    std::shared_ptr<const void> keep;  // owns the bytes `ref` points to
  };
  std::vector<Item> items_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` to `path` atomically (temp file, fsync, rename).
inline void save_safetensors(const std::string& path, std::vector<TensorRef> tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  const auto bytes = serialize_safetensors(std::move(tensors), metadata);
  atomic_write(path, std::span<const uint8_t>(bytes));
}

}  // namespace distill::io
