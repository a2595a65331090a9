// bitsandbytes 4-bit weights (NF4/FP4, blockwise, optional double quant; quant/nf4.hpp) on the GPU: launchers
// defined in kernels/nf4.cu (distill::kernels). The weight W [rows = out, cols = in] stays packed on the
// device; what the kernels compute is exactly quant/nf4.hpp's dequantization — code[q]·scale in f32, scale
// decoded from the double-quantized absmax inside the kernel (dyn[absmax_q]·nested_absmax + offset, two f32
// roundings), rounded to the checkpoint's dtype (q.dtype, what bitsandbytes dequantizes to) and then to T —
// followed by an f32-accumulated product:
//  - nf4_dequantize: W in T, bit-identical to quant::dequantize_4bit + the casts of nn::nf4_weight.
//  - nf4_gemv (decode, M <= 16 rows of x): y = x·Wᵀ streaming each packed byte once, f32 accumulation, split-K
//    with a second, deterministic reduction pass when the matrix has too few rows to fill the GPU. Two kernels:
//    v4 (bf16, M >= 2, in_features % 64 == 0) on bf16 tensor cores, the M rows of x as mma's A operand and a
//    dequantized weight tile as B, 16 output rows per warp; v3 otherwise (a warp per output row, coalesced 4-byte
//    weight words and 16-byte x loads).
//  - nf4_matmul (any M): the GEMV for M <= 16 when nf4_gemv_unsupported_reason() is empty; otherwise (the
//    training shapes) W is dequantized into scratch memory and multiplied by cuBLASLt (cuda::gemm).
//  - nf4_matmul_dx: dx = dy·W (the backward to the input), dequantize + cuBLASLt.
// The kernel lab (kernels/dev/nf4/) holds every version and the sweeps; the production GEMVs are its v3 and v4.
// This header does not include CUDA headers: host-compiled code may include it (nn::nf4_linear does).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distill/cuda/runtime.hpp"
#include "distill/quant/nf4.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::cuda {

// What the kernels read: device pointers and the geometry of one 4-bit weight. `through` is the dtype the
// values are rounded to before T (0: f32, 1: bf16, 2: f16 — the checkpoint's dtype).
struct Nf4View {
  const uint8_t* packed = nullptr;       // (rows·cols + 1) / 2 bytes, element 2i in the high nibble
  const float* absmax = nullptr;         // per block (not nested)
  const uint8_t* absmax_q = nullptr;     // per block (nested)
  const float* nested_absmax = nullptr;  // per nested block
  const float* code = nullptr;           // 16 values (quant_map)
  const float* nested_code = nullptr;    // 256 values (nested_quant_map)
  int64_t rows = 0, cols = 0;            // W is [rows, cols] = [out_features, in_features]
  int64_t blocksize = 64, nested_blocksize = 256;
  float nested_offset = 0.f;
  bool nested = false;
  int through = 1;
};

inline int through_code(io::StDtype d) { return d == io::StDtype::BF16 ? 1 : d == io::StDtype::F16 ? 2 : 0; }

// A Quant4 uploaded once: the packed bytes and statistics in device memory (from the caching allocator),
// freed with the object. Move-only; layers hold it through a shared_ptr beside the host Quant4.
class Nf4Device {
 public:
  explicit Nf4Device(const quant::Quant4& q) {
    DISTILL_CHECK(q.shape.size() == 2, "cuda::Nf4Device: the 4-bit weight must be 2-D [out, in], got rank ",
                  q.shape.size());
    q.validate("cuda::Nf4Device");
    type_ = q.type;
    dtype_ = q.dtype;
    v_.rows = q.shape[0];
    v_.cols = q.shape[1];
    v_.blocksize = q.blocksize;
    v_.nested = q.nested;
    v_.nested_blocksize = q.nested_blocksize;
    v_.nested_offset = q.nested_offset;
    v_.through = through_code(q.dtype);
    v_.packed = upload(q.packed);
    std::vector<float> tables(q.code.begin(), q.code.end());
    tables.insert(tables.end(), q.nested_code.begin(), q.nested_code.end());
    const float* t = upload(tables);
    v_.code = t;
    v_.nested_code = t + 16;
    if (q.nested) {
      v_.absmax_q = upload(q.absmax_q);
      v_.nested_absmax = upload(q.nested_absmax);
    } else {
      v_.absmax = upload(q.absmax);
    }
  }
  ~Nf4Device() {
    for (void* p : owned_) device_free(p);
  }
  Nf4Device(const Nf4Device&) = delete;
  Nf4Device& operator=(const Nf4Device&) = delete;

  const Nf4View& view() const { return v_; }
  int64_t rows() const { return v_.rows; }
  int64_t cols() const { return v_.cols; }
  quant::QuantType type() const { return type_; }
  io::StDtype dtype() const { return dtype_; }
  size_t device_bytes() const { return bytes_; }

 private:
  template <class E>
  const E* upload(const std::vector<E>& v) {
    const size_t n = v.size() * sizeof(E);
    void* p = device_malloc(n ? n : 1);
    owned_.push_back(p);
    bytes_ += n;
    if (n) memcpy_host_to_device(p, v.data(), n);
    return static_cast<const E*>(p);
  }
  Nf4View v_;
  quant::QuantType type_ = quant::QuantType::Nf4;
  io::StDtype dtype_ = io::StDtype::BF16;
  std::vector<void*> owned_;
  size_t bytes_ = 0;
};

inline std::shared_ptr<const Nf4Device> upload_nf4(const quant::Quant4& q) {
  return std::make_shared<const Nf4Device>(q);
}

inline constexpr int64_t kNf4GemvMaxRows = 16;  // M above this takes dequantize + cuBLASLt

// --- launchers (kernels/nf4.cu). T: float, bf16, f16. Everything runs on current_stream(). -----------------

// out[rows·cols] = W in T (rounded through the checkpoint's dtype), any element count.
template <class T>
void nf4_dequantize(const Nf4View& w, T* out);

// y[m·ldy + n] = Σ_k x[m·ldx + k]·W[n, k] for m < M <= 16, n < rows; f32 accumulation, one rounding to T.
// splits: K partitions (0 = choose from the shape and the GPU); > 1 needs a [splits, M, rows] f32 scratch
// that the launcher takes from the caching allocator. version: the lab version of the kernel — 3 (CUDA cores,
// a warp per row; any dtype), 4 (bf16 tensor cores, 16 rows per warp; bf16 with in_features % 64 == 0), or 0:
// v4 where it fits and M >= 2, else v3. Throws with nf4_gemv_unsupported_reason() when the layout does not fit.
template <class T>
void nf4_gemv(const T* x, int64_t ldx, int64_t M, const Nf4View& w, T* y, int64_t ldy, int splits = 0, int version = 0);

// Whether the tensor-core GEMV (v4) can take this weight (bf16 activations are the caller's part).
inline bool nf4_gemv_v4_fits(const Nf4View& w) { return w.cols % 64 == 0 && w.blocksize % 16 == 0; }

// The K partitions nf4_gemv uses for `rows` output rows of `cols` inputs on a GPU of `sms` multiprocessors:
// enough warps to fill it (32 per SM; a warp takes 1 row in v3, 16 in v4), each partition at least 1024 (v3) or
// 256 (v4) columns.
inline int nf4_gemv_splits(int64_t rows, int64_t cols, int sms, int version = 3) {
  const int64_t want_warps = int64_t{32} * (sms > 0 ? sms : 1);
  const int64_t warps = version == 4 ? (rows + 15) / 16 : rows;
  int64_t s = (want_warps + warps - 1) / std::max<int64_t>(warps, 1);
  const int64_t max_by_k = std::max<int64_t>(1, cols / (version == 4 ? 256 : 1024));
  s = std::min<int64_t>({s, max_by_k, 32});
  return static_cast<int>(std::max<int64_t>(s, 1));
}

// Why nf4_gemv cannot take this layout (empty: it can), with what to do instead. The kernel reads the packed
// row in 4-byte words of 8 weights (each inside one quantization block) and x in 16-byte pieces.
inline std::string nf4_gemv_unsupported_reason(const Nf4View& w, int64_t M, const void* x, int64_t ldx,
                                               size_t elem_bytes) {
  std::string why;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) why += (why.empty() ? "" : "; ") + what;
  };
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  need(M >= 1 && M <= kNf4GemvMaxRows,
       "M = " + std::to_string(M) + " rows of activations (the GEMV takes 1 to 16; nf4_matmul takes any)");
  need(w.cols % 8 == 0, "in_features = " + std::to_string(w.cols) +
                            " is not a multiple of 8 (pad the weight's columns, or call nf4_matmul, which "
                            "falls back to dequantize + cuBLASLt)");
  need(w.blocksize % 8 == 0, "blocksize " + std::to_string(w.blocksize) + " is not a multiple of 8");
  need((reinterpret_cast<uintptr_t>(w.packed) & 3u) == 0, "the packed weight is not 4-byte aligned");
  need(al16(x) && (ldx * static_cast<int64_t>(elem_bytes)) % 16 == 0,
       "x or its row stride (" + std::to_string(ldx) + " elements) is not 16-byte aligned (make x contiguous)");
  const int cc = compute_capability();
  need(cc == 0 || cc >= 80, "compute capability " + std::to_string(cc / 10) + "." + std::to_string(cc % 10) +
                                " is below 8.0 (the kernels are built for Ampere and Hopper)");
  return why;
}

// --- Tensor level (x and dy row-major [M, ·], contiguous) ------------------------------------------------

// W [rows, cols] in T.
template <class T>
Tensor<T, Cuda> nf4_dequantize(const Nf4Device& w) {
  auto out = Tensor<T, Cuda>::empty({w.rows(), w.cols()});
  nf4_dequantize<T>(w.view(), out.data());
  return out;
}

// x [M, cols] -> [M, rows]: the GEMV for M <= 16 when the layout allows, else dequantize + cuBLASLt.
template <class T>
Tensor<T, Cuda> nf4_matmul(const Tensor<T, Cuda>& x, const Nf4Device& w);

// dy [M, rows] -> dx [M, cols] = dy·W (dequantize + cuBLASLt).
template <class T>
Tensor<T, Cuda> nf4_matmul_dx(const Tensor<T, Cuda>& dy, const Nf4Device& w);

// Calls of each path since the start (tests check the routing).
struct Nf4Counters {
  int64_t gemv = 0, gemv_v4 = 0, dequant_gemm = 0;  // gemv counts both versions
};
Nf4Counters nf4_counters();

}  // namespace distill::cuda
