// One candidate row scored against a few queries at once, so each candidate load feeds several
// multiply-adds, in each vector width: Rerank's scorer (see scoring.h), and so InnerProduct and
// SquaredL2. A query's score never depends on which other queries share the call: every query keeps
// its own accumulators and the same order of operations.
#include "lookalike/kernels.h"

#include "scoring.h"
#include "simd.h"

namespace lookalike {
namespace {

// The sum of a vector's lanes as a halving tree (lane i + lane i + width/2, down to one): a few
// shuffles and adds, where adding the lanes one by one is a chain of width dependent adds.
LOOKALIKE_INLINE float SumLanes(const F4& a) { return (a[0] + a[2]) + (a[1] + a[3]); }
LOOKALIKE_INLINE float SumLanes(const F8& a) {
  F4 lo, hi;
  __builtin_memcpy(&lo, &a, sizeof(F4));
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(F4), sizeof(F4));
  return SumLanes(lo + hi);
}
LOOKALIKE_INLINE float SumLanes(const F16& a) {
  F8 lo, hi;
  __builtin_memcpy(&lo, &a, sizeof(F8));
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(F8), sizeof(F8));
  return SumLanes(lo + hi);
}

// out[g] = score(cand, queries[g]) for g < G: dot product, or squared distance if kL2.
template <class V, int G, bool kL2>
LOOKALIKE_INLINE void ScoreGroup(const float* cand, const float* const* queries, int64_t dim, float* out) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  const float* q[G];
  for (int g = 0; g < G; ++g) q[g] = queries[g];
  V acc[G][2] = {};  // two accumulators per query hide the add latency
  int64_t i = 0;
  for (; i + 2 * kWidth <= dim; i += 2 * kWidth) {
    V c0, c1;
    Load(c0, cand + i);
    Load(c1, cand + i + kWidth);
    for (int g = 0; g < G; ++g) {
      V x0, x1;
      Load(x0, q[g] + i);
      Load(x1, q[g] + i + kWidth);
      if (kL2) {
        x0 = c0 - x0;
        x1 = c1 - x1;
        acc[g][0] += x0 * x0;
        acc[g][1] += x1 * x1;
      } else {
        acc[g][0] += c0 * x0;
        acc[g][1] += c1 * x1;
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    float s = SumLanes(acc[g][0] + acc[g][1]);
    for (int64_t t = i; t < dim; ++t) {
      const float c = cand[t];
      const float x = q[g][t];
      s += kL2 ? (c - x) * (c - x) : c * x;
    }
    out[g] = s;
  }
}

template <class V, bool kL2>
LOOKALIKE_INLINE void ScoreRowT(const float* cand, const float* const* queries, int64_t count, int64_t dim,
                                float* out) {
  for (; count >= 4; count -= 4, queries += 4, out += 4) ScoreGroup<V, 4, kL2>(cand, queries, dim, out);
  switch (count) {
    case 3: ScoreGroup<V, 3, kL2>(cand, queries, dim, out); break;
    case 2: ScoreGroup<V, 2, kL2>(cand, queries, dim, out); break;
    case 1: ScoreGroup<V, 1, kL2>(cand, queries, dim, out); break;
    default: break;
  }
}

// One inner-product and one squared-L2 scorer per instruction set: the target attribute must sit on the
// function that inlines ScoreRowT, so each pair is its own function.
#define LOOKALIKE_ROW(name, isa_attr, V)                                                             \
  isa_attr void name##Ip(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {    \
    ScoreRowT<V, false>(c, q, n, d, o);                                                              \
  }                                                                                                  \
  isa_attr void name##L2(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {    \
    ScoreRowT<V, true>(c, q, n, d, o);                                                               \
  }

LOOKALIKE_ROW(ScoreRowBase, , F4)
#ifdef LOOKALIKE_X86
LOOKALIKE_ROW(ScoreRowAvx2, LOOKALIKE_TARGET("avx2,fma"), F8)
LOOKALIKE_ROW(ScoreRowAvx512, LOOKALIKE_TARGET("avx512f"), F16)
#endif
#undef LOOKALIKE_ROW

}  // namespace

ScoreRowFn PickScoreRow(Metric metric) {
  const bool l2 = metric == Metric::kSquaredL2;
#ifdef LOOKALIKE_X86
  if (BestIsa() == Isa::kAvx512) return l2 ? ScoreRowAvx512L2 : ScoreRowAvx512Ip;
  if (BestIsa() == Isa::kAvx2) return l2 ? ScoreRowAvx2L2 : ScoreRowAvx2Ip;
#endif
  return l2 ? ScoreRowBaseL2 : ScoreRowBaseIp;
}

float InnerProduct(const float* a, const float* b, int64_t dim) {
  float out;
  PickScoreRow(Metric::kInnerProduct)(a, &b, 1, dim, &out);
  return out;
}

float SquaredL2(const float* a, const float* b, int64_t dim) {
  float out;
  PickScoreRow(Metric::kSquaredL2)(a, &b, 1, dim, &out);
  return out;
}

}  // namespace lookalike
