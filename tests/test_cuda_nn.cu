// nn/ on the GPU: nf4_linear (kernels/nf4.cu: the decode GEMV for <= 16 rows, dequantize + cuBLASLt above; the
// weight uploaded per call, or once by Linear<T, Cuda>) and a LoRA adapter's delta with its gradients, against
// ref:: and the CPU backend's gradients of the same graph.
// A .cu file: the adapter's element-wise products compile into kernels here.
#include "cuda_harness.hpp"
#include "distill/nn/linear.hpp"

using namespace distill;
using namespace distill::test;

TEST_CASE("cuda:nf4_linear") {
  const Tensor<float> w = Tensor<float>::uniform({37, 70}, 3, -0.5, 0.5);
  const auto q = std::make_shared<const quant::Quant4>(
      quant::quantize_4bit(w.data(), {37, 70}, quant::QuantType::Nf4, 64, true, io::StDtype::F32));
  const Tensor<float> x = Tensor<float>::uniform({2, 3, 70}, 4), g = Tensor<float>::uniform({2, 3, 37}, 5);
  Var<float, Cuda> xd = Var<float, Cuda>::param(to_dev(x));
  Var<float, Cuda> yd = nn::nf4_linear(xd, q);
  check_close(yd.value(), nn::ref::nf4_linear(x, *q), kTolF32, "nf4_linear forward");
  yd.backward(to_dev(g));
  Var<float> xc = Var<float>::param(x);
  nn::nf4_linear(xc, q).backward(g);
  check_close(xd.grad(), xc.grad(), kTolF32, "nf4_linear dx");
}

TEST_CASE("cuda:nn::Linear with a 4-bit base uses its device copy; bf16, decode and training row counts") {
  const Tensor<float> w = Tensor<float>::uniform({96, 128}, 31, -0.1, 0.1).cast<bf16>().cast<float>();
  const auto q = std::make_shared<const quant::Quant4>(
      quant::quantize_4bit(w.data(), {96, 128}, quant::QuantType::Nf4, 64, true, io::StDtype::BF16));
  const nn::Linear<bf16, Cuda> lin(q);
  REQUIRE(lin.q4_dev != nullptr);
  CHECK(same_bits(lin.dense_weight(), to_dev(nn::nf4_weight<bf16, Cpu>(*q))));
  for (int64_t rows : {1, 5, 16, 40}) {  // <= 16: GEMV; 40: dequantize + cuBLASLt
    const Tensor<bf16> x = Tensor<float>::uniform({rows, 128}, 40 + rows).cast<bf16>();
    const Tensor<bf16> g = Tensor<float>::uniform({rows, 96}, 80 + rows).cast<bf16>();
    const auto before = cuda::nf4_counters();
    Var<bf16, Cuda> xd = Var<bf16, Cuda>::param(to_dev(x));
    Var<bf16, Cuda> yd = nn::linear(xd, lin);
    yd.backward(to_dev(g));
    const auto after = cuda::nf4_counters();
    CHECK(after.gemv - before.gemv == (rows <= 16 ? 1 : 0));
    Var<bf16> xc = Var<bf16>::param(x);
    Var<bf16> yc = nn::nf4_linear(xc, q);
    yc.backward(g);
    check_close(yd.value(), yc.value(), kTolBf16, "Linear<bf16, Cuda> forward, rows " + std::to_string(rows));
    check_close(xd.grad(), xc.grad(), kTolBf16, "Linear<bf16, Cuda> dx, rows " + std::to_string(rows));
  }
}

TEST_CASE("cuda:lora") {
  nn::LoraConfig c;
  c.r = 3;
  c.alpha = 6;
  auto cpu = nn::LoraAdapter<Cpu>::make(10, 7, c, 5);
  cpu.B = Var<float>::param(Tensor<float>::uniform({7, 3}, 6));
  nn::LoraAdapter<Cuda> dev;
  dev.A = Var<float, Cuda>::param(to_dev(cpu.A.value()));
  dev.B = Var<float, Cuda>::param(to_dev(cpu.B.value()));
  dev.scaling = cpu.scaling;
  const Tensor<float> x = Tensor<float>::uniform({4, 10}, 7), g = Tensor<float>::uniform({4, 7}, 8);
  Var<float> xc = Var<float>::param(x);
  Var<float, Cuda> xd = Var<float, Cuda>::param(to_dev(x));
  Var<float> yc = cpu.delta(xc, false, 0);
  Var<float, Cuda> yd = dev.delta(xd, false, 0);
  check_close(yd.value(), yc.value(), kTolF32, "lora delta");
  yc.backward(g);
  yd.backward(to_dev(g));
  check_close(dev.A.grad(), cpu.A.grad(), kTolF32, "lora dA");
  check_close(dev.B.grad(), cpu.B.grad(), kTolF32, "lora dB");
  check_close(xd.grad(), xc.grad(), kTolF32, "lora dx");
}
