// RMSNorm lab, v2 = kernels/rmsnorm.cu, included as is (its kernels keep the _v2 suffix): each row held in
// registers (16-byte packs when the row length and pointers allow), short rows sharing a block, warp
// shuffles plus one shared-memory step for wide rows; backward with per-block f32 dw partials reduced by a
// second kernel (no atomics). What changed from v1 (rmsnorm_v1.cu): one read of x (and g) instead of two or
// three, 16-byte loads, no separate dw pass over x and g.
// This file checks the launchers against a CPU reference in double, times them at 64 MB+ against the copy
// bandwidth, and sweeps the plan (packs per thread x block threads) around the production choice.
//   nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Xcompiler -fopenmp -DDISTILL_WITH_CUDA \
//        -diag-suppress=20012,20013,20015,20011,20014 \
//        -I include -isystem /usr/include/eigen3 kernels/dev/rmsnorm/rmsnorm_v2.cu kernels/runtime.cu \
//        -lcublasLt -o /tmp/rmsnorm_v2 && /tmp/rmsnorm_v2
#include "../../rmsnorm.cu"
// the lab's own host code
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

using namespace distill;
using namespace distill::cuda;

namespace {

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : p(static_cast<T*>(device_malloc(sizeof(T) * count))), n(count) {}
  ~Dev() { device_free(p); }
  void upload(const std::vector<T>& v) { memcpy_host_to_device(p, v.data(), sizeof(T) * v.size()); }
  std::vector<T> download() const {
    std::vector<T> v(n);
    memcpy_device_to_host(v.data(), p, sizeof(T) * n);
    return v;
  }
};

template <class T>
struct Problem {
  int64_t rows;
  int64_t cols;
  std::vector<T> x, w, g;
  Dev<T> dx_in, dw_in, dg, dy, ddx, ddw;
  Dev<float> rstd;
  Problem(int64_t r, int64_t c)
      : rows(r),
        cols(c),
        dx_in(static_cast<size_t>(r * c)),
        dw_in(static_cast<size_t>(c)),
        dg(static_cast<size_t>(r * c)),
        dy(static_cast<size_t>(r * c)),
        ddx(static_cast<size_t>(r * c)),
        ddw(static_cast<size_t>(c)),
        rstd(static_cast<size_t>(r)) {
    std::mt19937 gen(11);
    std::uniform_real_distribution<float> u(-2.f, 2.f), uw(0.5f, 1.5f);
    x.resize(static_cast<size_t>(r * c));
    g.resize(x.size());
    w.resize(static_cast<size_t>(c));
    for (auto& v : x) v = static_cast<T>(u(gen));
    for (auto& v : g) v = static_cast<T>(0.5f * u(gen));
    for (auto& v : w) v = static_cast<T>(uw(gen));
    dx_in.upload(x);
    dg.upload(g);
    dw_in.upload(w);
  }
  void forward(RmsNormStyle st) { rms_norm_forward<T>(dx_in.p, dw_in.p, dy.p, rstd.p, rows, cols, 1e-6f, st); }
  void backward(RmsNormStyle st) { rms_norm_backward<T>(dx_in.p, dw_in.p, rstd.p, dg.p, ddx.p, ddw.p, rows, cols, st); }

  // Max error in units of the dtype's tolerance (atol = rtol = 1e-5 for f32, 1.6e-2 for bf16), against double
  // loops with the same rounding points.
  double check(RmsNormStyle st) {
    forward(st);
    backward(st);
    const auto y = dy.download(), dxv = ddx.download(), dwv = ddw.download();
    const bool one_plus = st == RmsNormStyle::OnePlusWeight;
    const double tol = sizeof(T) == 4 ? 1e-5 : 1.6e-2;
    double worst = 0;
    auto f = [](T v) { return static_cast<double>(to_compute<T>(v)); };
    auto err = [&](double got, double want) {
      worst = std::max(worst, std::abs(got - want) / (tol + tol * std::abs(want)));
    };
    std::vector<double> dw(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const size_t o = static_cast<size_t>(r * cols);
      double ss = 0, dot = 0;
      for (int64_t j = 0; j < cols; ++j) ss += f(x[o + j]) * f(x[o + j]);
      const double rs = 1.0 / std::sqrt(ss / static_cast<double>(cols) + 1e-6);
      for (int64_t j = 0; j < cols; ++j) {
        const double s = (one_plus ? 1.0 : 0.0) + f(w[static_cast<size_t>(j)]), xh = f(x[o + j]) * rs;
        const double xq = one_plus ? xh : f(static_cast<T>(static_cast<float>(xh)));
        err(f(y[o + j]), one_plus ? xh * s : xq * s);
        dot += f(g[o + j]) * s * xh;
        dw[static_cast<size_t>(j)] += f(g[o + j]) * xq;
      }
      for (int64_t j = 0; j < cols; ++j) {
        const double s = (one_plus ? 1.0 : 0.0) + f(w[static_cast<size_t>(j)]), xh = f(x[o + j]) * rs;
        err(f(dxv[o + j]), rs * (f(g[o + j]) * s - xh * dot / static_cast<double>(cols)));
      }
    }
    for (int64_t j = 0; j < cols; ++j) err(f(dwv[static_cast<size_t>(j)]), dw[static_cast<size_t>(j)]);
    return worst;
  }
};

template <class F>
double time_ms(F fn) {
  for (int i = 0; i < 3; ++i) fn();
  synchronize();
  std::vector<double> t;
  EventTimer timer;
  for (int i = 0; i < 20; ++i) {
    timer.start();
    fn();
    t.push_back(timer.stop_ms());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double copy_gbps() {
  const size_t n = size_t{256} << 20;
  void* a = device_malloc(n);
  void* b = device_malloc(n);
  memset_device_zero(a, n);
  const double ms = time_ms([&] { memcpy_device_to_device(b, a, n); });
  device_free(a);
  device_free(b);
  return 2.0 * static_cast<double>(n) / (ms * 1e-3) / 1e9;
}

// --- the sweep: the production kernels under other plans ------------------------------------------------
template <class T, int V, int P>
double time_plan(Problem<T>& pb, const RmsNormPlan& pl, bool bwd) {
  using S = typename DevType<T>::type;
  const auto* x = reinterpret_cast<const S*>(pb.dx_in.p);
  const auto* w = reinterpret_cast<const S*>(pb.dw_in.p);
  const auto* g = reinterpret_cast<const S*>(pb.dg.p);
  auto* y = reinterpret_cast<S*>(pb.dy.p);
  const int c = static_cast<int>(pb.cols);
  if (!bwd) return time_ms([&] { launch_forward<S, V, P>(pl, x, w, y, pb.rstd.p, pb.rows, c, 1e-6f, false); });
  const int64_t nb = launch_backward<S, V, P>(pl, x, w, pb.rstd.p, g, y, nullptr, pb.rows, c, false, true);
  Dev<float> partial(static_cast<size_t>(nb * pb.cols));
  return time_ms([&] {
    launch_backward<S, V, P>(pl, x, w, pb.rstd.p, g, y, partial.p, pb.rows, c, false, false);
    launch(rms_norm_dw_reduce<S>, static_cast<unsigned>((pb.cols + 31) / 32), dim3(32, kReduceSlices), 0,
           static_cast<const float*>(partial.p), nb, c, reinterpret_cast<S*>(pb.ddw.p));
  });
}

template <class T>
void sweep(Problem<T>& pb, double copy, bool bwd) {
  constexpr int V = 16 / sizeof(T);
  const double bytes = static_cast<double>(pb.rows * pb.cols) * sizeof(T) * (bwd ? 3 : 2);
  const RmsNormPlan prod = plan_rms_norm(pb.cols, sizeof(T), true, bwd);
  for (int packs : {1, 2, 4})
    for (int block : {128, 256, 512}) {
      RmsNormPlan pl;
      pl.vec = V;
      const int64_t npk = pb.cols / V;
      int tpr = 1;
      while (int64_t{tpr} * packs < npk) tpr *= 2;
      if (tpr > kRmsNormMaxRowThreads || tpr > block) continue;
      pl.row_threads = tpr;
      pl.rows_per_block = std::max(1, block / tpr);
      pl.packs = packs;
      double ms = 0;
      if (packs == 1) ms = time_plan<T, V, 1>(pb, pl, bwd);
      if (packs == 2) ms = time_plan<T, V, 2>(pb, pl, bwd);
      if (packs == 4) ms = time_plan<T, V, 4>(pb, pl, bwd);
      const bool is_prod =
          pl.row_threads == prod.row_threads && pl.rows_per_block == prod.rows_per_block && pl.packs == prod.packs;
      std::printf("  sweep %s %s [%lld, %lld]: %d threads/row x %d rows, %d packs: %.1f GB/s (%.0f%%)%s\n",
                  dtype_name_v<T>, bwd ? "bwd" : "fwd", static_cast<long long>(pb.rows),
                  static_cast<long long>(pb.cols), pl.row_threads, pl.rows_per_block, pl.packs,
                  bytes / (ms * 1e-3) / 1e9, 100 * bytes / (ms * 1e-3) / 1e9 / copy, is_prod ? "  <- production" : "");
    }
}

template <class T>
void run(double copy) {
  const char* name = dtype_name_v<T>;
  for (auto st : {RmsNormStyle::Weight, RmsNormStyle::OnePlusWeight})
    for (auto [r, c] : {std::pair<int64_t, int64_t>{257, 1152}, {1000, 128}, {31, 8192}, {5, 20000}, {99, 77}}) {
      Problem<T> small(r, c);
      const double e = small.check(st);
      std::printf("v2 %s %s [%lld, %lld]: max error %.2f x tolerance %s\n", name,
                  st == RmsNormStyle::Weight ? "Weight" : "OnePlusWeight", static_cast<long long>(r),
                  static_cast<long long>(c), e, e <= 1.0 ? "(ok)" : "(FAIL)");
    }
  for (auto [r, c] : {std::pair<int64_t, int64_t>{16384, 2048}, {262144, 128}, {16384, 2560}}) {
    Problem<T> p(r, c);
    const double bytes = static_cast<double>(r * c) * sizeof(T);
    const double f = time_ms([&] { p.forward(RmsNormStyle::Weight); });
    const double b = time_ms([&] { p.backward(RmsNormStyle::Weight); });
    std::printf("v2 %s [%lld, %lld] forward  %.3f ms %.0f GB/s (%.0f%% of copy)\n", name, static_cast<long long>(r),
                static_cast<long long>(c), f, 2 * bytes / (f * 1e6), 100 * 2 * bytes / (f * 1e6) / copy);
    std::printf("v2 %s [%lld, %lld] backward %.3f ms %.0f GB/s (%.0f%% of copy)\n", name, static_cast<long long>(r),
                static_cast<long long>(c), b, 3 * bytes / (b * 1e6), 100 * 3 * bytes / (b * 1e6) / copy);
    sweep(p, copy, false);
    sweep(p, copy, true);
  }
}

}  // namespace

int main() {
  if (device_count() == 0) {
    std::printf("rmsnorm_v2: %s\n", probe_message().c_str());
    return 0;
  }
  const double copy = copy_gbps();
  std::printf("%s; copy bandwidth (read + write) %.0f GB/s\n", probe_message().c_str(), copy);
  run<float>(copy);
  run<bf16>(copy);
  return 0;
}
