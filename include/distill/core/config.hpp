// Compiler/host-device macros.
#pragma once

#if defined(__CUDACC__)
#define DISTILL_HOST_DEVICE __host__ __device__
#else
#define DISTILL_HOST_DEVICE
#endif

// For small math the vectorizer must see inlined (a call keeps a fused loop scalar).
#if defined(__GNUC__) || defined(__clang__)
#define DISTILL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DISTILL_ALWAYS_INLINE inline
#endif

// The same, for member functions (already implicitly inline).
#if defined(__GNUC__) || defined(__clang__)
#define DISTILL_FORCEINLINE __attribute__((always_inline))
#else
#define DISTILL_FORCEINLINE
#endif

// Runtime ISA dispatch for the fused element-wise loops: GCC compiles them for x86-64-v3 (AVX2+FMA)
// and x86-64-v4 (AVX-512) besides the baseline, and picks one at load time (ifunc), so a binary built
// without -march still runs the math at full width (measured 3.4x on silu(a)*b). Skipped when the
// build already targets AVX-512, off GCC/x86-64/Linux, or with -DDISTILL_NO_TARGET_CLONES.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(__AVX512F__) && \
    !defined(DISTILL_NO_TARGET_CLONES)
#define DISTILL_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "arch=x86-64-v4", "default")))
#else
#define DISTILL_TARGET_CLONES
#endif
