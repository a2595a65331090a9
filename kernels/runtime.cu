// CUDA runtime glue behind include/distill/cuda/runtime.hpp and check.hpp: the GPU probe (any runtime
// error means "no GPU"), device and stream selection, the caching device allocator, copies, event
// timing, and the per-device cuBLASLt handle.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "distill/cuda/check.hpp"
#include "distill/cuda/runtime.hpp"

namespace distill::cuda {

// --- probe ----------------------------------------------------------------------------------------
int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error ("driver version is insufficient", no device, ...)
    return 0;
  }
  return n;
}

std::string probe_message() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable GPU: ") + cudaGetErrorString(e);
  }
  if (n == 0) return "no usable GPU: no CUDA devices";
  cudaDeviceProp p{};
  DISTILL_CHECK_CUDA(cudaGetDeviceProperties(&p, 0));
  return std::to_string(n) + " GPU(s); device 0: " + p.name + " (sm_" + std::to_string(p.major) +
         std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

int compute_capability() {
  // Cached per device: the 4-bit GEMV checks it on every call (decoding), and it never changes.
  static std::atomic<int> cache[64] = {};
  if (device_count() == 0) return 0;
  int dev = 0, major = 0, minor = 0;
  DISTILL_CHECK_CUDA(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64)
    if (const int c = cache[dev].load(std::memory_order_relaxed); c > 0) return c;
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (dev >= 0 && dev < 64) cache[dev].store(major * 10 + minor, std::memory_order_relaxed);
  return major * 10 + minor;
}

// --- device and stream ----------------------------------------------------------------------------
namespace {
thread_local cudaStream_t t_stream = nullptr;
}

void set_device(int device) { DISTILL_CHECK_CUDA(cudaSetDevice(device)); }
int current_device() {
  int d = 0;
  DISTILL_CHECK_CUDA(cudaGetDevice(&d));
  return d;
}
void* current_stream() { return t_stream; }
// Freed blocks (and the cuBLASLt workspace) are reused in the order of the stream that freed them; switching
// streams first waits for the old one, so nothing still pending there can see its memory handed out again.
void set_current_stream(void* s) {
  if (static_cast<cudaStream_t>(s) == t_stream) return;
  DISTILL_CHECK_CUDA(cudaStreamSynchronize(t_stream));
  t_stream = static_cast<cudaStream_t>(s);
}
void synchronize() { DISTILL_CHECK_CUDA(cudaStreamSynchronize(t_stream)); }

// --- caching allocator ------------------------------------------------------------------------------
namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;  // requests below 1 MiB round to 512 B
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;  // larger ones to 2 MiB

size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t r = bytes < kSmallLimit ? kSmallRound : kLargeRound;
  return (bytes + r - 1) / r * r;
}

struct Block {
  size_t size = 0;       // rounded size held from cudaMalloc
  size_t requested = 0;  // what the caller asked for (the stats count this)
  int device = 0;
};

struct Pool {
  std::multimap<size_t, void*> free_blocks;  // rounded size -> pointer
  MemoryStats stats;
};

struct Allocator {
  std::mutex mu;
  std::unordered_map<void*, Block> live;  // handed-out blocks
  std::unordered_map<void*, Block> all;   // every block from cudaMalloc (live or cached)
  std::map<int, Pool> pools;

  void release_cached_locked(Pool& pool) {
    for (auto& [sz, p] : pool.free_blocks) {
      cudaFree(p);
      all.erase(p);
      pool.stats.reserved_bytes -= sz;
      pool.stats.cached_bytes -= sz;
    }
    pool.free_blocks.clear();
  }

  void* allocate(size_t bytes) {
    int dev = 0;
    DISTILL_CHECK_CUDA(cudaGetDevice(&dev));
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mu);
    Pool& pool = pools[dev];
    ++pool.stats.num_alloc;
    // Best fit among cached blocks of this size class: the smallest at least `size`, and never more
    // than twice it for large blocks (a 2 GiB block must not serve a 2 MiB request).
    auto it = pool.free_blocks.lower_bound(size);
    if (it != pool.free_blocks.end() && (size < kSmallLimit ? it->first == size : it->first <= 2 * size)) {
      void* p = it->second;
      Block b = all.at(p);
      pool.free_blocks.erase(it);
      pool.stats.cached_bytes -= b.size;
      b.requested = bytes;
      live[p] = b;
      pool.stats.current_bytes += bytes;
      pool.stats.peak_bytes = std::max(pool.stats.peak_bytes, pool.stats.current_bytes);
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked(pool);
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error(std::string(e == cudaErrorMemoryAllocation ? "CUDA out of memory: " : "") + "cudaMalloc of " +
                  std::to_string(size) + " bytes on device " + std::to_string(dev) + " failed: " + cudaGetErrorName(e) +
                  " (" + cudaGetErrorString(e) + "); Distill holds " + std::to_string(pool.stats.current_bytes) +
                  " bytes in use, " + std::to_string(pool.stats.reserved_bytes) + " reserved");
    }
    ++pool.stats.num_cuda_malloc;
    Block b{size, bytes, dev};
    all[p] = b;
    live[p] = b;
    pool.stats.reserved_bytes += size;
    pool.stats.current_bytes += bytes;
    pool.stats.peak_bytes = std::max(pool.stats.peak_bytes, pool.stats.current_bytes);
    return p;
  }

  void release(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = live.find(p);
    if (it == live.end()) {
      std::fprintf(stderr, "distill: device_free of a pointer the allocator did not hand out (%p)\n", p);
      return;
    }
    const Block b = it->second;
    live.erase(it);
    Pool& pool = pools[b.device];
    pool.stats.current_bytes -= b.requested;
    pool.stats.cached_bytes += b.size;
    pool.free_blocks.emplace(b.size, p);
  }
};

// Never destroyed: tensors freed during static destruction must still find it, and cudaFree after the
// driver has shut down would fail anyway (the process exit releases device memory).
Allocator& allocator() {
  static Allocator* a = new Allocator();
  return *a;
}

}  // namespace

void* device_malloc(size_t bytes) { return allocator().allocate(bytes); }
void device_free(void* p) noexcept {
  if (p) allocator().release(p);
}

MemoryStats memory_stats(int device) {
  if (device < 0) device = current_device();
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.pools[device].stats;
}
void reset_peak_memory(int device) {
  if (device < 0) device = current_device();
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.pools[device].stats.peak_bytes = a.pools[device].stats.current_bytes;
}
void empty_cache() {
  auto& a = allocator();
  DISTILL_CHECK_CUDA(cudaDeviceSynchronize());
  std::lock_guard<std::mutex> lock(a.mu);
  for (auto& [dev, pool] : a.pools) a.release_cached_locked(pool);
}

// --- copies -----------------------------------------------------------------------------------------
DeviceMemoryInfo device_memory_info() {
  DeviceMemoryInfo m;
  DISTILL_CHECK_CUDA(cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  m.cached_bytes = memory_stats(-1).cached_bytes;
  return m;
}

void memcpy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DISTILL_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, t_stream));
  DISTILL_CHECK_CUDA(cudaStreamSynchronize(t_stream));  // the host buffer may go away after we return
}
void memcpy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DISTILL_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, t_stream));
  DISTILL_CHECK_CUDA(cudaStreamSynchronize(t_stream));
}
void memcpy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DISTILL_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, t_stream));
}
void memset_device_zero(void* dst, size_t bytes) {
  if (!bytes) return;
  DISTILL_CHECK_CUDA(cudaMemsetAsync(dst, 0, bytes, t_stream));
}

// --- timing -----------------------------------------------------------------------------------------
EventTimer::EventTimer() {
  cudaEvent_t a, b;
  DISTILL_CHECK_CUDA(cudaEventCreate(&a));
  DISTILL_CHECK_CUDA(cudaEventCreate(&b));
  start_ = a;
  stop_ = b;
}
EventTimer::~EventTimer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}
void EventTimer::start() { DISTILL_CHECK_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(start_), t_stream)); }
float EventTimer::stop_ms() {
  DISTILL_CHECK_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(stop_), t_stream));
  DISTILL_CHECK_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)));
  float ms = 0;
  DISTILL_CHECK_CUDA(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)));
  return ms;
}

// --- cuBLASLt ---------------------------------------------------------------------------------------
namespace {
constexpr size_t kLtWorkspace = size_t{32} << 20;
struct LtState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};
std::mutex g_lt_mu;
std::map<int, LtState>& lt_states() {
  static auto* m = new std::map<int, LtState>();  // never destroyed (see allocator())
  return *m;
}
LtState& lt_state() {
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(g_lt_mu);
  LtState& s = lt_states()[dev];
  if (!s.handle) {
    // Both or neither: a failed workspace allocation must not leave a handle without its workspace.
    void* ws = device_malloc(kLtWorkspace);
    cublasLtHandle_t h = nullptr;
    const cublasStatus_t st = cublasLtCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) {
      device_free(ws);
      DISTILL_CHECK_CUBLAS(st);
    }
    s.workspace = ws;
    s.handle = h;
  }
  return s;
}
}  // namespace

cublasLtHandle_t cublaslt_handle() { return lt_state().handle; }
void* cublaslt_workspace(size_t* bytes) {
  if (bytes) *bytes = kLtWorkspace;
  return lt_state().workspace;
}

}  // namespace distill::cuda
