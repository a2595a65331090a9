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
