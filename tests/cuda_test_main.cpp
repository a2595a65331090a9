// Main of every CUDA test executable (test_cuda_*.cpp / .cu). Without a usable GPU (CI: "driver
// version is insufficient") it runs nothing and exits 77, which ctest reports as SKIPPED, never as
// passed; the output says why.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "distill/cuda/runtime.hpp"

int main(int argc, char** argv) {
  if (distill::cuda::device_count() == 0) {
    std::printf("SKIPPED: %s; the CUDA cases of %s did not run (they are not counted as passed)\n",
                distill::cuda::probe_message().c_str(), argc ? argv[0] : "this test");
    return 77;
  }
  std::printf("CUDA: %s\n", distill::cuda::probe_message().c_str());
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
