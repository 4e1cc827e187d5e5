// Internal (not part of lookalike/kernels.h): how the kernels write vector code and pick it at run time.
//
// GCC/Clang vector types let one template body compile to SSE, AVX2+FMA or AVX-512 code; the build
// targets x86-64-v2, so the wider versions are compiled with target attributes and picked at run time
// from what the CPU supports (as hnswlib does). Only the files with vector code need this.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LOOKALIKE_X86 1
#define LOOKALIKE_TARGET(isa) __attribute__((target(isa)))
#endif
#define LOOKALIKE_INLINE inline __attribute__((always_inline))

namespace lookalike {

// Float vectors of 4, 8 and 16 lanes. Template arguments drop alignment attributes, so loads go
// through Load (an unaligned copy the compiler turns into one vector load).
typedef float F4 __attribute__((vector_size(16)));
typedef float F8 __attribute__((vector_size(32)));
typedef float F16 __attribute__((vector_size(64)));

template <class V>
LOOKALIKE_INLINE void Load(V& v, const float* p) {
  __builtin_memcpy(&v, p, sizeof(V));
}

// The widest vector code this CPU runs, chosen once per process so scores are reproducible within it;
// LOOKALIKE_SIMD=avx2 or =base in the environment caps it (the tests run the narrower code that way).
enum class Isa { kBase, kAvx2, kAvx512 };

Isa BestIsa();  // simd.cpp

}  // namespace lookalike
