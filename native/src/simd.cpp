// Which vector code the kernels run (simd.h): chosen here once for the process, and reported by the
// public SimdLevel.
#include "lookalike/kernels.h"

#include <cstdlib>
#include <cstring>

#include "simd.h"

namespace lookalike {

Isa BestIsa() {
#ifdef LOOKALIKE_X86
  static const Isa isa = [] {
    Isa best = __builtin_cpu_supports("avx512f")                                   ? Isa::kAvx512
               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2
                                                                                  : Isa::kBase;
    const char* cap = std::getenv("LOOKALIKE_SIMD");
    if (cap != nullptr && std::strcmp(cap, "base") == 0) best = Isa::kBase;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0) best = std::min(best, Isa::kAvx2);
    return best;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

const char* SimdLevel() {
  switch (BestIsa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace lookalike
