// One QLoRA training step, timed: the base quantized to NF4 (double quant) on load, LoRA on the seven
// projections, loss on every token of random ids (fixed seed), backward, clipping, AdamW. Driven by
// tools/bench_qlora.py, which runs PEFT + bitsandbytes on the same model and ids beside it.
//   qlora_step --model DIR [--batch 4] [--seq 256] [--steps 5] [--warmup 1] [--r 16] [--threads 0]
//              [--no-quantize] [--grad-checkpoint] [--ids FILE.json]
// Prints one JSON line: tokens_per_s (batch*seq / median step time), step_s (median), peak_rss_mb (whole run),
// loss of each step.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/models/adapter.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/train/adamw.hpp"
#include "distill/train/loss.hpp"
#include "distill/train/schedule.hpp"

using namespace distill;

namespace {

struct Args {
  std::string model, ids_file;
  int64_t batch = 4, seq = 256, steps = 5, warmup = 1, r = 16;
  int threads = 0;
  bool quantize = true, ckpt = false;
};

template <models::TransformerSpec Spec>
int run(const Args& a) {
  models::LoadOptions lo;
  lo.quantize = a.quantize;
  auto model = models::Transformer<Spec, float>::load(a.model, "model", lo);
  nn::LoraConfig lc;
  lc.r = a.r;
  lc.alpha = static_cast<double>(a.r);
  models::attach_lora(model, lc);
  auto ids = Tensor<int32_t>::empty({a.batch, a.seq});
  if (!a.ids_file.empty()) {
    const auto j = nlohmann::json::parse(std::ifstream(a.ids_file));
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t t = 0; t < a.seq; ++t)
        ids(b, t) = j.at(static_cast<size_t>(b)).at(static_cast<size_t>(t)).get<int32_t>();
  } else {
    std::mt19937 g(1234);
    std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(model.dims().vocab - 1));
    for (int64_t i = 0; i < ids.numel(); ++i) ids.data()[i] = u(g);
  }
  const Tensor<int32_t> labels = ids.clone();
  const int64_t n = train::count_targets(labels);
  AdamW<Cpu> opt(models::lora_parameters(model), AdamWConfig{2e-4, 0.9, 0.999, 1e-8, 0.0});
  models::RunOptions run;
  run.checkpoint_blocks = a.ckpt;
  std::vector<double> times, losses;
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    auto l = train::causal_lm_loss(model, ids, labels, Tensor<int32_t>(), n, run);
    l.backward();
    const double norm = grad_global_norm(opt.params());
    opt.step(clip_coefficient(norm, 1.0));
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= a.warmup) {
      times.push_back(dt);
      losses.push_back(l.value().data()[0]);
    }
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  nlohmann::json out{{"impl", "distill"},
                     {"threads", max_threads()},
                     {"batch", a.batch},
                     {"seq", a.seq},
                     {"step_s", med},
                     {"tokens_per_s", static_cast<double>(a.batch * a.seq) / med},
                     {"peak_rss_mb", static_cast<double>(ru.ru_maxrss) / 1024.0},
                     {"losses", losses}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "qlora_step: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--model")
      a.model = val();
    else if (k == "--ids")
      a.ids_file = val();
    else if (k == "--batch")
      a.batch = std::stoll(val());
    else if (k == "--seq")
      a.seq = std::stoll(val());
    else if (k == "--steps")
      a.steps = std::stoll(val());
    else if (k == "--warmup")
      a.warmup = std::stoll(val());
    else if (k == "--r")
      a.r = std::stoll(val());
    else if (k == "--threads")
      a.threads = std::stoi(val());
    else if (k == "--no-quantize")
      a.quantize = false;
    else if (k == "--grad-checkpoint")
      a.ckpt = true;
    else {
      std::fprintf(stderr,
                   "usage: qlora_step --model DIR [--batch B] [--seq T] [--steps N] [--warmup W] [--r R] "
                   "[--threads K] [--no-quantize] [--grad-checkpoint] [--ids FILE]\n");
      return 2;
    }
  }
  if (a.model.empty() || a.steps < 1) {
    std::fprintf(stderr, "qlora_step: --model DIR is required (and --steps >= 1)\n");
    return 2;
  }
#if defined(_OPENMP)
  if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
  try {
    const io::ModelConfig c = io::load_model_config(a.model);
    return c.arch == io::ModelArch::Qwen3 ? run<models::qwen3::kFamily>(a) : run<models::gemma3::kFamily>(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qlora_step: error: %s\n", e.what());
    return 1;
  }
}
