// nn/ on the GPU: nf4_linear (the weight dequantized on the host and uploaded until issue 7's kernels) and a
// LoRA adapter's delta with its gradients, against ref:: and the CPU backend's gradients of the same graph.
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
