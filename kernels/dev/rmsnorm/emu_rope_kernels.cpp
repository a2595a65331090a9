// kernels/rope.cu compiled for the CPU emulator (emu.hpp), to link with emu_runtime.cpp and host code
// written against Tensor<T, Cuda> (e.g. tests/test_cuda_rope.cpp); see README.md in this folder.
#include "emu.hpp"
// the kernel source, as nvcc would see it
#include "../../rope.cu"
