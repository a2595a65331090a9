// Host-side CUDA probe and memory entry points, defined in kernels/runtime.cu (distill::kernels).
// This header never includes the CUDA runtime, so CPU-only code can include it freely.
#pragma once
#include <cstddef>
#include <string>

namespace distill::cuda {

// Number of usable GPUs; 0 when the runtime reports any error (no driver, "driver version is
// insufficient", no device). Tests use it to skip CUDA cases, saying why via probe_message().
int device_count() noexcept;
std::string probe_message();

void* device_malloc(size_t bytes);
void device_free(void* p) noexcept;
void memcpy_host_to_device(void* dst, const void* src, size_t bytes);
void memcpy_device_to_host(void* dst, const void* src, size_t bytes);
void memcpy_device_to_device(void* dst, const void* src, size_t bytes);
void memset_device_zero(void* dst, size_t bytes);

}  // namespace distill::cuda
