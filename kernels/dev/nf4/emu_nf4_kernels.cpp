// kernels/nf4.cu compiled for the CPU emulator (../rmsnorm/emu.hpp: every thread a fiber, barriers and warp
// shuffles checked), to link with ../rmsnorm/emu_runtime.cpp, emu_gemm.cpp and tests/test_cuda_nf4.cpp: the
// GPU test cases run on the CPU (ctest: emulator.nf4). See README.md in this folder.
#include "../rmsnorm/emu.hpp"
// the kernel source, as nvcc would see it
#include "../../nf4.cu"
