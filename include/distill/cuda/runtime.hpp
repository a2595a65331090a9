// Host-side CUDA entry points, defined in kernels/runtime.cu (distill::kernels): the GPU probe, the
// device and stream in use, the caching device allocator, copies, and event timing.
// This header never includes the CUDA runtime, so CPU-only code can include it freely; streams and
// events travel as void* (cudaStream_t / cudaEvent_t underneath).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace distill::cuda {

// --- probe ----------------------------------------------------------------------------------------
// Number of usable GPUs; 0 when the runtime reports any error (no driver, "driver version is
// insufficient", no device). Tests use it to skip CUDA cases, saying why via probe_message().
int device_count() noexcept;
std::string probe_message();
// Compute capability of the current device as major*10 + minor (90 on Hopper); 0 without a GPU.
int compute_capability();

// --- device and stream ----------------------------------------------------------------------------
// Every Distill kernel, copy and cuBLASLt call of this host thread runs on current_stream() of the
// current device, in order. The default is the legacy default stream (nullptr), which also orders
// against plain cudaMemcpy/kernel launches in user code.
void set_device(int device);
int current_device();
void* current_stream();
// A cudaStream_t; nullptr restores the default. Waits for the previous stream first. The caching allocator
// and the cuBLASLt workspace are per device, not per stream: host threads that drive the SAME device on
// different streams concurrently are not supported (one stream per device at a time, or one device per
// thread, as multi-GPU training does).
void set_current_stream(void* stream);
void synchronize();  // waits for current_stream()

// --- caching allocator ------------------------------------------------------------------------------
// device_malloc hands out blocks from per-device free lists (sizes rounded up to 512 B below 1 MiB, to
// 2 MiB above) and calls cudaMalloc only when no cached block fits; device_free returns the block to
// its list. Blocks are reused in stream order on current_stream(), so a steady-state training step
// performs no cudaMalloc at all. On cudaErrorMemoryAllocation the cache is released and the call
// retried once; if it still fails, the error names the request and the allocator's counters.
void* device_malloc(size_t bytes);
void device_free(void* p) noexcept;

struct MemoryStats {
  size_t current_bytes = 0;      // handed out now (requested sizes)
  size_t peak_bytes = 0;         // max of current_bytes since start or reset_peak_memory()
  size_t reserved_bytes = 0;     // held from cudaMalloc (in use + cached)
  size_t cached_bytes = 0;       // held in the free lists
  uint64_t num_cuda_malloc = 0;  // cudaMalloc calls made so far (a steady-state loop adds none)
  uint64_t num_alloc = 0;        // device_malloc calls served
};
MemoryStats memory_stats(int device = -1);  // -1: the current device
void reset_peak_memory(int device = -1);
void empty_cache();  // cudaFree every cached (unused) block of every device

// cudaMemGetInfo of the current device, plus what this process's caching allocator holds unused (memory it
// can hand out without a cudaMalloc): what a KV cache may be sized from.
struct DeviceMemoryInfo {
  size_t free_bytes = 0;    // free on the device (cudaMemGetInfo)
  size_t total_bytes = 0;   // the device's memory
  size_t cached_bytes = 0;  // held in this process's free lists
  size_t available() const { return free_bytes + cached_bytes; }
};
DeviceMemoryInfo device_memory_info();

// --- copies (on current_stream(); the ones that touch host memory return when done) -------------------
void memcpy_host_to_device(void* dst, const void* src, size_t bytes);
void memcpy_device_to_host(void* dst, const void* src, size_t bytes);
void memcpy_device_to_device(void* dst, const void* src, size_t bytes);
void memset_device_zero(void* dst, size_t bytes);

// --- timing -----------------------------------------------------------------------------------------
// Elapsed GPU time between start() and stop() on current_stream(), in milliseconds (CUDA events).
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  float stop_ms();  // records the stop event, waits for it, returns the elapsed time

 private:
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace distill::cuda
