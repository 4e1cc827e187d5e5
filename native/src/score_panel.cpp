// TopKShared's tiles: a few candidate rows against a panel of packed queries, accumulated in registers
// like a matrix product, in each vector width (picked by PickScorePanel, see scoring.h). Kept apart from
// the blocking and selection in top_k_shared.cpp: this is the part that is compiled per ISA.
#include "lookalike/kernels.h"

#include "scoring.h"
#include "simd.h"

namespace lookalike {
namespace {

// Bit i set where key[i] is not below bar[i] (NaN keys too: TopKShared keeps them, ranked last).
LOOKALIKE_INLINE uint32_t NotBelow(const F4& key, const F4& bar) {
#ifdef LOOKALIKE_X86
  return static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpnlt_ps(reinterpret_cast<const __m128&>(key),
                                                             reinterpret_cast<const __m128&>(bar))));
#else
  uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(!(key[i] < bar[i])) << i;
  return bits;
#endif
}
#ifdef LOOKALIKE_X86
LOOKALIKE_TARGET("avx") LOOKALIKE_INLINE uint32_t NotBelow(const F8& key, const F8& bar) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(
      reinterpret_cast<const __m256&>(key), reinterpret_cast<const __m256&>(bar), _CMP_NLT_UQ)));
}
LOOKALIKE_TARGET("avx512f") LOOKALIKE_INLINE uint32_t NotBelow(const F16& key, const F16& bar) {
  return _mm512_cmp_ps_mask(reinterpret_cast<const __m512&>(key), reinterpret_cast<const __m512&>(bar),
                            _CMP_NLT_UQ);
}
#endif

// One dimension of a tile: every candidate element is broadcast against the panel's vectors.
template <class V, int NV, int MR, bool kL2>
LOOKALIKE_INLINE void PanelStep(V (&acc)[MR][NV], const float* panel, const float* rows, int64_t row_stride,
                                int64_t d) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  V q[NV];
  for (int v = 0; v < NV; ++v) Load(q[v], panel + d * NV * kWidth + v * kWidth);
  for (int m = 0; m < MR; ++m) {
    const float c = rows[m * row_stride + d];
    for (int v = 0; v < NV; ++v) {
      if (kL2) {
        const V diff = q[v] - c;
        acc[m][v] += diff * diff;
      } else {
        acc[m][v] += q[v] * c;
      }
    }
  }
}

// GEMM-style: the queries are packed once into panels of `lanes` queries stored dimension-major
// (panel[d * lanes + i] = query i's element d), so one vector load holds a dimension of every query of
// the panel, and a tile's rows x (lanes / width) accumulators stay in registers, with no horizontal sums.
// Every score is one sequential chain over the dimensions (a fused multiply-add per step where the CPU
// has FMA), so it depends neither on the tile, the blocking, the threads nor the other queries.
template <class V, int NV, int MR, bool kL2>
LOOKALIKE_INLINE void ScorePanelT(const TileArgs& a) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  const float* const panel = a.panel;
  const float* const rows = a.rows;
  const int64_t row_stride = a.row_stride;
  const int64_t len = a.len;
  float* const out = a.out;
  const int64_t out_stride = a.out_stride;
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      if (a.first) {
        acc[m][v] = V{};
      } else {
        Load(acc[m][v], out + m * out_stride + v * kWidth);
      }
    }
  }
  // The next tile's rows, a cache line of each per 16 dimensions, into L2: the first pass over a block
  // reads them from memory, and 12 rows 5 KiB apart are too many short streams for the hardware prefetcher.
  // (Integer addresses: the last tile's next rows lie past the matrix, where a prefetch is harmless.)
  const uintptr_t next = reinterpret_cast<uintptr_t>(rows) + MR * row_stride * sizeof(float);
  int64_t d = 0;
  for (; d + 16 <= len; d += 16) {
    for (int m = 0; m < MR; ++m) {
      __builtin_prefetch(reinterpret_cast<const void*>(next + (m * row_stride + d) * sizeof(float)), 0, 2);
    }
    for (int i = 0; i < 16; ++i) PanelStep<V, NV, MR, kL2>(acc, panel, rows, row_stride, d + i);
  }
  for (; d < len; ++d) PanelStep<V, NV, MR, kL2>(acc, panel, rows, row_stride, d);
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + m * out_stride + v * kWidth, &acc[m][v], sizeof(V));
  }
}

// Each ISA has a wide tile (two vectors of queries) and a narrow one for calls with few queries. The
// accumulators fill the registers: 12 x 2 or 16 x 1 of the 32 AVX-512 ones, 6 x 2 or 12 x 1 of 16.
// The hits of a finished tile are read back from `out` (still in L1) by code compiled in the tile's
// function: the compare-to-mask instructions need its target, which a template called from it lacks.
#define LOOKALIKE_PANEL(name, isa_attr, V, NV, MR)                                              \
  isa_attr LOOKALIKE_INLINE void name##Hits(const TileArgs& a) {                                \
    constexpr int kWidth = sizeof(V) / sizeof(float);                                           \
    V bar[NV];                                                                                  \
    for (int v = 0; v < NV; ++v) Load(bar[v], a.bar + v * kWidth);                              \
    for (int m = 0; m < MR; ++m) {                                                              \
      uint32_t bits = 0;                                                                        \
      for (int v = 0; v < NV; ++v) {                                                            \
        V key;                                                                                  \
        Load(key, a.out + m * a.out_stride + v * kWidth);                                       \
        bits |= NotBelow(a.negate ? -key : key, bar[v]) << (v * kWidth);                        \
      }                                                                                         \
      a.hits[m * a.hits_stride] = bits;                                                         \
    }                                                                                           \
  }                                                                                             \
  isa_attr void name##Ip(const TileArgs& a) {                                                   \
    ScorePanelT<V, NV, MR, false>(a);                                                           \
    if (a.bar != nullptr) name##Hits(a);                                                        \
  }                                                                                             \
  isa_attr void name##L2(const TileArgs& a) {                                                   \
    ScorePanelT<V, NV, MR, true>(a);                                                            \
    if (a.bar != nullptr) name##Hits(a);                                                        \
  }

LOOKALIKE_PANEL(ScorePanelWideBase, , F4, 2, 6)
LOOKALIKE_PANEL(ScorePanelNarrowBase, , F4, 1, 12)
#ifdef LOOKALIKE_X86
LOOKALIKE_PANEL(ScorePanelWideAvx2, LOOKALIKE_TARGET("avx2,fma"), F8, 2, 6)
LOOKALIKE_PANEL(ScorePanelNarrowAvx2, LOOKALIKE_TARGET("avx2,fma"), F8, 1, 12)
LOOKALIKE_PANEL(ScorePanelWideAvx512, LOOKALIKE_TARGET("avx512f"), F16, 2, 12)
LOOKALIKE_PANEL(ScorePanelNarrowAvx512, LOOKALIKE_TARGET("avx512f"), F16, 1, 16)
#endif
#undef LOOKALIKE_PANEL

}  // namespace

PanelScorer PickScorePanel(Metric metric, int64_t num_queries) {
  const bool l2 = metric == Metric::kSquaredL2;
#ifdef LOOKALIKE_X86
  if (BestIsa() == Isa::kAvx512) {
    if (num_queries <= 16) return {l2 ? ScorePanelNarrowAvx512L2 : ScorePanelNarrowAvx512Ip, 16, 16};
    return {l2 ? ScorePanelWideAvx512L2 : ScorePanelWideAvx512Ip, 32, 12};
  }
  if (BestIsa() == Isa::kAvx2) {
    if (num_queries <= 8) return {l2 ? ScorePanelNarrowAvx2L2 : ScorePanelNarrowAvx2Ip, 8, 12};
    return {l2 ? ScorePanelWideAvx2L2 : ScorePanelWideAvx2Ip, 16, 6};
  }
#endif
  if (num_queries <= 4) return {l2 ? ScorePanelNarrowBaseL2 : ScorePanelNarrowBaseIp, 4, 12};
  return {l2 ? ScorePanelWideBaseL2 : ScorePanelWideBaseIp, 8, 6};
}

}  // namespace lookalike
