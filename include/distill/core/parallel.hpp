// A thin OpenMP parallel-for: splits [0, n) into contiguous chunks of at least `grain` items.
// Without OpenMP it runs serially.
#pragma once
#include <algorithm>
#include <cstdint>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace distill {

inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The threads later parallel regions use: n > 0 sets it (the tools' --threads), 0 keeps OpenMP's default.
inline void set_max_threads(int n) {
#if defined(_OPENMP)
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

// fn(begin, end) is called on disjoint ranges covering [0, n).
template <class F>
inline void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int64_t nthreads = max_threads();
  const int64_t chunks = std::min<int64_t>(nthreads, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(static_cast <int>(chunks)) schedule(static)
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    fn(b, e);
  }
}

// Like parallel_for, for bodies that run many SMALL Eigen products (attention tiles): Eigen must not
// open its own OpenMP team per tile. Inside a team of several threads Eigen already stays serial; on
// the single-chunk path the calling thread's OpenMP thread count is set to 1 while fn runs.
template <class F>
inline void parallel_for_tiles(int64_t n, int64_t grain, F&& fn) {
  const int64_t chunks = std::min<int64_t>(max_threads(), std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
  if (n > 0 && chunks <= 1) {
#if defined(_OPENMP)
    struct SerialScope {
      int prev = omp_get_max_threads();
      SerialScope() { omp_set_num_threads(1); }
      ~SerialScope() { omp_set_num_threads(prev); }
    } serial;
#endif
    fn(int64_t{0}, n);
    return;
  }
  parallel_for(n, grain, std::forward<F>(fn));
}

}  // namespace distill
