// Row normalisation, exact re-ranking and exact top-k over shared candidates; see lookalike/kernels.h
// for the contracts.
//
// Scoring uses GCC/Clang vector types so that one template body compiles to SSE, AVX2+FMA or AVX-512
// code; the build targets x86-64-v2, so the wider versions are compiled with target attributes and
// picked at run time from what the CPU supports (as hnswlib does).
#include "lookalike/kernels.h"

#include <cfloat>
#include <cmath>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#define LOOKALIKE_X86 1
#define LOOKALIKE_TARGET(isa) __attribute__((target(isa)))
#endif
#define LOOKALIKE_INLINE inline __attribute__((always_inline))

namespace lookalike {
namespace {

// ---------------------------------------------------------------------------------------------
// Normalisation: memory-bound, so a plain loop the compiler vectorises is as fast as anything.

// Independent accumulators per loop step: enough to hide the add latency and to let the compiler
// turn them into full SIMD registers.
constexpr int kLanes = 16;

inline float SumSquares(const float* x, int64_t dim) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
  }
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  for (; i < dim; ++i) s += x[i] * x[i];
  return s;
}

void NormalizeRow(float* x, int64_t dim) {
  const float sum = SumSquares(x, dim);  // the row is in L1 afterwards, so scaling costs no re-read
  if (sum >= FLT_MIN && sum <= FLT_MAX) {  // the common case: no overflow, no underflow
    const float factor = 1.0f / std::sqrt(sum);
    for (int64_t i = 0; i < dim; ++i) x[i] *= factor;
    return;
  }
  if (std::isnan(sum)) return;  // NaN in the row: nothing meaningful to do, leave it be
  // Overflowed or underflowed in float (or a zero row): redo it in double, which cannot.
  double wide = 0.0;
  for (int64_t i = 0; i < dim; ++i) wide += static_cast<double>(x[i]) * x[i];
  if (wide == 0.0 || std::isinf(wide)) return;  // a zero row stays zero; inf only if the row holds inf
  const double factor = 1.0 / std::sqrt(wide);
  for (int64_t i = 0; i < dim; ++i) x[i] = static_cast<float>(x[i] * factor);
}

// ---------------------------------------------------------------------------------------------
// Scoring: one candidate row against a few queries at once, so each candidate load feeds several
// multiply-adds. A query's score never depends on which other queries share the call: every query
// keeps its own accumulators and the same order of operations.

// Float vectors of 4, 8 and 16 lanes. Template arguments drop alignment attributes, so loads go
// through Load (an unaligned copy the compiler turns into one vector load).
typedef float F4 __attribute__((vector_size(16)));
typedef float F8 __attribute__((vector_size(32)));
typedef float F16 __attribute__((vector_size(64)));

template <class V>
LOOKALIKE_INLINE void Load(V& v, const float* p) {
  __builtin_memcpy(&v, p, sizeof(V));
}

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

// Scores one candidate row against `count` queries: out[i] = score(cand, queries[i]).
using ScoreRowFn = void (*)(const float* cand, const float* const* queries, int64_t count, int64_t dim,
                            float* out);

void ScoreRowIpBase(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F4, false>(c, q, n, d, o);
}
void ScoreRowL2Base(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F4, true>(c, q, n, d, o);
}
#ifdef LOOKALIKE_X86
LOOKALIKE_TARGET("avx2,fma")
void ScoreRowIpAvx2(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F8, false>(c, q, n, d, o);
}
LOOKALIKE_TARGET("avx2,fma")
void ScoreRowL2Avx2(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F8, true>(c, q, n, d, o);
}
LOOKALIKE_TARGET("avx512f")
void ScoreRowIpAvx512(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F16, false>(c, q, n, d, o);
}
LOOKALIKE_TARGET("avx512f")
void ScoreRowL2Avx512(const float* c, const float* const* q, int64_t n, int64_t d, float* o) {
  ScoreRowT<F16, true>(c, q, n, d, o);
}
#endif

// The widest vector code this CPU runs, chosen once per process so scores are reproducible within it.
enum class Isa { kBase, kAvx2, kAvx512 };

Isa BestIsa() {
#ifdef LOOKALIKE_X86
  static const Isa isa = __builtin_cpu_supports("avx512f")                                   ? Isa::kAvx512
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2
                                                                                            : Isa::kBase;
  return isa;
#else
  return Isa::kBase;
#endif
}

ScoreRowFn PickScoreRow(Metric metric) {
  const bool l2 = metric == Metric::kSquaredL2;
#ifdef LOOKALIKE_X86
  if (BestIsa() == Isa::kAvx512) return l2 ? ScoreRowL2Avx512 : ScoreRowIpAvx512;
  if (BestIsa() == Isa::kAvx2) return l2 ? ScoreRowL2Avx2 : ScoreRowIpAvx2;
#endif
  return l2 ? ScoreRowL2Base : ScoreRowIpBase;
}

// Tiles for TopKShared, GEMM-style: the queries are packed once into panels of `lanes` queries
// stored dimension-major (panel[d * lanes + i] = query i's element d), so one vector load holds a
// dimension of every query of the panel. A tile scores `rows` consecutive candidate rows against a
// panel: each candidate element is broadcast and multiply-added into that candidate's accumulators,
// rows x (lanes / width) vectors that stay in registers, with no horizontal sums. Every score is then
// one sequential chain over the dimensions (a fused multiply-add per step where the CPU has FMA), so
// it does not depend on the tile, the blocking, the threads or the other queries of the call.
template <class V, int NV, int MR, bool kL2>
LOOKALIKE_INLINE void ScorePanelT(const float* panel, const float* rows, int64_t row_stride, int64_t len,
                                  bool first, float* out, int64_t out_stride) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      if (first) {
        acc[m][v] = V{};
      } else {
        Load(acc[m][v], out + m * out_stride + v * kWidth);
      }
    }
  }
  for (int64_t d = 0; d < len; ++d) {
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
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + m * out_stride + v * kWidth, &acc[m][v], sizeof(V));
  }
}

// out[m * out_stride + i] = score(row m, panel query i) for m < rows, i < lanes, over dimensions
// [0, len) of the already offset `panel` and `rows`; `first` starts from zero, else adds to out.
using ScorePanelFn = void (*)(const float* panel, const float* rows, int64_t row_stride, int64_t len, bool first,
                              float* out, int64_t out_stride);

struct PanelScorer {
  ScorePanelFn fn;
  int lanes;  // queries per panel
  int rows;   // candidate rows per tile
};

// Each ISA has a wide tile (two vectors of queries) and a narrow one for calls with few queries. The
// accumulators fill the registers: 12 x 2 or 16 x 1 of the 32 AVX-512 ones, 6 x 2 or 12 x 1 of 16.
#define LOOKALIKE_PANEL(name, isa_attr, V, NV, MR)                                                         \
  isa_attr void name##Ip(const float* p, const float* r, int64_t rs, int64_t n, bool f, float* o,           \
                         int64_t os) {                                                                      \
    ScorePanelT<V, NV, MR, false>(p, r, rs, n, f, o, os);                                                   \
  }                                                                                                         \
  isa_attr void name##L2(const float* p, const float* r, int64_t rs, int64_t n, bool f, float* o,           \
                         int64_t os) {                                                                      \
    ScorePanelT<V, NV, MR, true>(p, r, rs, n, f, o, os);                                                    \
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

// The widest code this CPU runs; the narrow tile when every query fits one vector.
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

// Asks the memory system for a row we are about to score, so its fetch overlaps the current one.
inline void PrefetchRow(const float* row, int64_t dim) {
  const char* p = reinterpret_cast<const char*>(row);
  const char* end = reinterpret_cast<const char*>(row + dim);
  for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
}

// ---------------------------------------------------------------------------------------------
// Top-k.

struct Scored {
  float key;    // higher is better in the requested order (the score, or its negation)
  int64_t row;  // candidate row
};

// Best key first; equal keys by smaller row; NaN keys (only from NaN/inf input) last, so this stays
// a strict weak order whatever the data.
inline bool Before(const Scored& a, const Scored& b) {
  const bool a_nan = std::isnan(a.key);
  const bool b_nan = std::isnan(b.key);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a.key != b.key) return a.key > b.key;
  return a.row < b.row;
}

// Orders the best k of scored[0, m) first and writes them out; a short tail is row -1, score NaN.
void WriteTopK(Scored* scored, int64_t m, int64_t k, bool negate, int64_t* rows_out, float* scores_out) {
  const int64_t kept = std::min(k, m);
  if (kept < m) std::nth_element(scored, scored + kept, scored + m, Before);
  std::sort(scored, scored + kept, Before);
  for (int64_t j = 0; j < kept; ++j) {
    rows_out[j] = scored[j].row;
    scores_out[j] = negate ? -scored[j].key : scored[j].key;
  }
  for (int64_t j = kept; j < k; ++j) {
    rows_out[j] = -1;
    scores_out[j] = std::numeric_limits<float>::quiet_NaN();
  }
}

// Copies the valid, distinct rows of `listed` (length n) to out[0, m) and returns m. `seen` has a
// bit per candidate row, all clear on entry and on return.
int64_t CollectRows(const int64_t* listed, int64_t n, std::vector<uint64_t>& seen, Scored* out) {
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t row = listed[j];
    if (row < 0) continue;
    uint64_t& word = seen[row >> 6];
    const uint64_t bit = uint64_t{1} << (row & 63);
    if (word & bit) continue;
    word |= bit;
    out[m++] = {0.0f, row};
  }
  for (int64_t j = 0; j < m; ++j) seen[out[j].row >> 6] = 0;
  return m;
}

}  // namespace

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

void PixelsToTensor(const uint8_t* pixels, int64_t height, int64_t width, const float* table, float* out) {
  const int64_t plane = height * width;
  const float* red = table;
  const float* green = table + 256;
  const float* blue = table + 512;
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* p = pixels + y * width * 3;
    float* r = out + y * width;
    float* g = r + plane;
    float* b = g + plane;
    for (int64_t x = 0; x < width; ++x, p += 3) {
      r[x] = red[p[0]];
      g[x] = green[p[1]];
      b[x] = blue[p[2]];
    }
  }
}

void NormalizeRows(float* x, int64_t rows, int64_t dim, int threads) {
  if (rows <= 0 || dim <= 0) return;
  // Hand rows out in blocks of about 1 MiB, and stay on this thread when there is only one block.
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(float));
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 20) / row_bytes);
  const int64_t blocks = (rows + block - 1) / block;
  ParallelFor(0, blocks, blocks == 1 ? 1 : threads, [&](int64_t b, int) {
    const int64_t end = std::min(rows, (b + 1) * block);
    for (int64_t r = b * block; r < end; ++r) NormalizeRow(x + r * dim, dim);
  });
}

// Two ways to score, same results:
//  - query-major (few queries, or candidates far more numerous than the listed entries): each query
//    walks its own rows, prefetching the next;
//  - candidate-major (the usual batch, where `candidates` is the union of the queries' lists): each
//    candidate row is read from memory once, in order, and scored against every query that lists it,
//    several queries per pass.
void Rerank(const float* queries, int64_t num_queries, const float* candidates, int64_t num_candidates,
            int64_t dim, const int64_t* candidate_rows, int64_t per_query, int64_t k, Metric metric,
            bool reverse, int threads, int64_t* out_rows, float* out_scores) {
  if (num_queries <= 0 || k <= 0) return;
  // Keys are "higher is better": ip best-first as is, l2 best-first negated, reverse flips both.
  const bool negate = (metric == Metric::kSquaredL2) != reverse;
  const ScoreRowFn score_row = PickScoreRow(metric);
  const int64_t entries = num_queries * per_query;

  // Threads pay off only when there is real work; below ~1M multiply-adds run inline.
  threads = entries * std::max<int64_t>(dim, 1) < (int64_t{1} << 20) ? 1 : ResolveThreads(threads);
  threads = static_cast<int>(std::min<int64_t>(threads, num_queries));
  const int64_t seen_words = (num_candidates + 63) / 64 + 1;
  std::vector<std::vector<uint64_t>> seen(threads);
  auto seen_for = [&](int thread_id) -> std::vector<uint64_t>& {
    if (seen[thread_id].empty()) seen[thread_id].assign(seen_words, 0);
    return seen[thread_id];
  };

  // Each query's distinct rows go to scored[q * per_query, + count[q]).
  std::vector<Scored> scored(entries);
  std::vector<int64_t> count(num_queries);

  const bool candidate_major = num_queries >= 2 && num_candidates <= 2 * entries;
  if (!candidate_major) {
    ParallelFor(0, num_queries, threads, [&](int64_t q, int thread_id) {
      Scored* mine = scored.data() + q * per_query;
      const int64_t m = CollectRows(candidate_rows + q * per_query, per_query, seen_for(thread_id), mine);
      const float* query = queries + q * dim;
      for (int64_t j = 0; j < m; ++j) {
        if (j + 1 < m) PrefetchRow(candidates + mine[j + 1].row * dim, dim);
        float score;
        score_row(candidates + mine[j].row * dim, &query, 1, dim, &score);
        mine[j].key = negate ? -score : score;
      }
      WriteTopK(mine, m, k, negate, out_rows + q * k, out_scores + q * k);
    });
    return;
  }

  ParallelFor(0, num_queries, threads, [&](int64_t q, int thread_id) {
    count[q] = CollectRows(candidate_rows + q * per_query, per_query, seen_for(thread_id),
                           scored.data() + q * per_query);
  });

  // Invert: for candidate row r, slots[first[r], first[r + 1]) are the entries of `scored` listing it.
  std::vector<int64_t> first(num_candidates + 1, 0);
  for (int64_t q = 0; q < num_queries; ++q) {
    const Scored* mine = scored.data() + q * per_query;
    for (int64_t j = 0; j < count[q]; ++j) ++first[mine[j].row + 1];
  }
  for (int64_t r = 0; r < num_candidates; ++r) first[r + 1] += first[r];
  std::vector<int64_t> slots(first[num_candidates]);
  {
    std::vector<int64_t> next(first.begin(), first.end() - 1);
    for (int64_t q = 0; q < num_queries; ++q) {
      const Scored* mine = scored.data() + q * per_query;
      for (int64_t j = 0; j < count[q]; ++j) slots[next[mine[j].row]++] = q * per_query + j;
    }
  }

  // Score: candidate rows in blocks, each row against all its queries, up to kBatch at a time.
  constexpr int64_t kBlockRows = 64;
  constexpr int64_t kBatch = 64;
  const int64_t blocks = (num_candidates + kBlockRows - 1) / kBlockRows;
  ParallelFor(0, blocks, threads, [&](int64_t b, int) {
    const float* batch_queries[kBatch];
    float batch_scores[kBatch];
    const int64_t end = std::min(num_candidates, (b + 1) * kBlockRows);
    for (int64_t r = b * kBlockRows; r < end; ++r) {
      if (r + 1 < end && first[r + 2] > first[r + 1]) PrefetchRow(candidates + (r + 1) * dim, dim);
      const float* cand = candidates + r * dim;
      for (int64_t s = first[r]; s < first[r + 1]; s += kBatch) {
        const int64_t n = std::min(kBatch, first[r + 1] - s);
        for (int64_t i = 0; i < n; ++i) batch_queries[i] = queries + (slots[s + i] / per_query) * dim;
        score_row(cand, batch_queries, n, dim, batch_scores);
        for (int64_t i = 0; i < n; ++i) {
          scored[slots[s + i]].key = negate ? -batch_scores[i] : batch_scores[i];
        }
      }
    }
  });

  ParallelFor(0, num_queries, threads, [&](int64_t q, int) {
    WriteTopK(scored.data() + q * per_query, count[q], k, negate, out_rows + q * k, out_scores + q * k);
  });
}

// Work items are (block of queries, chunk of candidate rows); the queries are packed into panels once
// (see ScorePanelT). Inside an item, candidate rows go in blocks of about 1 MiB that stay in L2, and
// the dimensions in slices whose panel slice stays in L1 while every tile of the block uses it; the
// scores of a block land in a small rows x queries buffer. Each query then keeps a running top-k of its
// chunk: the scores not below its threshold (the worst of the best k so far) go into a list of up to
// k + max(k, 256), cut back to the best k whenever it fills, so a score costs one comparison and a kept
// one amortised O(1). A query's lists of every chunk are merged at the end; since (key, row) is a total
// order and a score does not depend on the tiling, the answer depends neither on the chunking nor on
// the threads.
void TopKShared(const float* queries, int64_t num_queries, const float* candidates, int64_t num_candidates,
                int64_t dim, int64_t k, Metric metric, bool reverse, int threads, int64_t* out_rows,
                float* out_scores) {
  if (num_queries <= 0 || k <= 0) return;
  const bool negate = (metric == Metric::kSquaredL2) != reverse;
  if (num_candidates <= 0) {
    for (int64_t q = 0; q < num_queries; ++q) WriteTopK(nullptr, 0, k, negate, out_rows + q * k, out_scores + q * k);
    return;
  }
  const PanelScorer tile = PickScorePanel(metric, num_queries);
  const int64_t lanes = tile.lanes;

  // Pack the queries, zero-padded to whole panels: panels[p][d][i] = queries[p * lanes + i][d].
  const int64_t num_panels = (num_queries + lanes - 1) / lanes;
  std::vector<float> panels(num_panels * lanes * std::max<int64_t>(dim, 1), 0.0f);
  for (int64_t q = 0; q < num_queries; ++q) {
    float* dst = panels.data() + (q / lanes) * lanes * dim + q % lanes;
    const float* src = queries + q * dim;
    for (int64_t d = 0; d < dim; ++d) dst[d * lanes] = src[d];
  }

  // Candidate blocks of about 1 MiB (L2), dimension slices of 256 (a 32 KiB panel slice in L1: 128 made
  // the accumulators go to memory and back twice as often, about 5-10% slower single-threaded).
  const int64_t row_bytes = std::max<int64_t>(dim, 1) * static_cast<int64_t>(sizeof(float));
  constexpr int64_t kSlice = 256;
  const int64_t block_rows =
      std::clamp<int64_t>((int64_t{1} << 20) / row_bytes / tile.rows, 1, 1024 / tile.rows) * tile.rows;

  // Threads pay off only when there is real work; below ~1M multiply-adds run inline. Split the
  // candidates into chunks first (every query block reads all of them again), into several items per
  // thread so the threads stay busy to the end when the cores are shared; queries in blocks of up to
  // 256 (8 panels) bound the score buffer.
  threads = num_queries * num_candidates * std::max<int64_t>(dim, 1) < (int64_t{1} << 20) ? 1 : ResolveThreads(threads);
  const int64_t panels_per_block = std::max<int64_t>(1, 256 / lanes);
  const int64_t query_block = panels_per_block * lanes;
  const int64_t query_blocks = (num_panels + panels_per_block - 1) / panels_per_block;
  const int64_t most_chunks = std::max<int64_t>(1, num_candidates / (4 * tile.rows));
  const int64_t chunks =
      threads == 1 ? 1 : std::clamp<int64_t>((3 * threads + query_blocks - 1) / query_blocks, 1, most_chunks);
  const int64_t chunk_rows = (num_candidates + chunks - 1) / chunks;
  const int64_t keep = std::min(k, chunk_rows);  // the best `keep` of a chunk are all a query can need
  const int64_t capacity = std::min(keep + std::max<int64_t>(keep, 256), chunk_rows);

  std::vector<Scored> lists(chunks * num_queries * capacity);
  std::vector<int64_t> sizes(chunks * num_queries, 0);
  const int64_t stride = std::min(query_block, num_panels * lanes);  // floats per candidate in a buffer
  struct Scratch {
    std::vector<float> scores;  // block_rows x stride
    std::vector<float> tail;    // a short last tile's rows, zero-padded to tile.rows
  };
  std::vector<Scratch> scratch(threads);

  ParallelFor(0, query_blocks * chunks, threads, [&](int64_t item, int thread_id) {
    const int64_t chunk = item % chunks;
    const int64_t p_begin = item / chunks * panels_per_block;
    const int64_t p_end = std::min(num_panels, p_begin + panels_per_block);
    const int64_t q_begin = p_begin * lanes;
    const int64_t q_end = std::min(num_queries, p_end * lanes);
    const int64_t r_begin = chunk * chunk_rows;
    const int64_t r_end = std::min(num_candidates, r_begin + chunk_rows);
    Scratch& mine = scratch[thread_id];
    if (mine.scores.empty()) {
      mine.scores.resize(block_rows * stride);
      mine.tail.assign(tile.rows * std::max<int64_t>(dim, 1), 0.0f);
    }
    // Each query's threshold: a key below it cannot enter that query's best `keep` (-inf until known).
    std::vector<float> threshold(q_end - q_begin, -std::numeric_limits<float>::infinity());

    for (int64_t b_begin = r_begin; b_begin < r_end; b_begin += block_rows) {
      const int64_t b_end = std::min(r_end, b_begin + block_rows);
      // A short last tile is scored from a zero-padded copy; its extra scores are never read.
      const int64_t full_end = b_begin + (b_end - b_begin) / tile.rows * tile.rows;
      if (full_end < b_end) {
        std::fill(mine.tail.begin(), mine.tail.end(), 0.0f);
        std::copy(candidates + full_end * dim, candidates + b_end * dim, mine.tail.begin());
      }
      for (int64_t d0 = 0; d0 < std::max<int64_t>(dim, 1); d0 += kSlice) {
        const int64_t len = std::min(kSlice, dim - d0);
        for (int64_t p = p_begin; p < p_end; ++p) {
          const float* panel = panels.data() + p * lanes * dim + d0 * lanes;
          float* out = mine.scores.data() + (p - p_begin) * lanes;
          for (int64_t j = b_begin; j < b_end; j += tile.rows) {
            const float* rows = j < full_end ? candidates + j * dim : mine.tail.data();
            tile.fn(panel, rows + d0, dim, len, d0 == 0, out + (j - b_begin) * stride, stride);
          }
        }
      }
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t slot = chunk * num_queries + q;
        Scored* list = lists.data() + slot * capacity;
        int64_t size = sizes[slot];
        float bar = threshold[q - q_begin];  // locals: the list's stores cannot alias them
        const float sign = negate ? -1.0f : 1.0f;
        const float* scores = mine.scores.data() + (q - q_begin);
        for (int64_t r = b_begin; r < b_end; ++r) {
          const float key = sign * scores[(r - b_begin) * stride];
          if (key < bar) continue;  // false for NaN keys: those go in, and sort last
          if (size == capacity) {
            std::nth_element(list, list + keep - 1, list + size, Before);
            size = keep;
            bar = list[keep - 1].key;
            if (key < bar) continue;
          }
          list[size].key = key;
          list[size].row = r;
          ++size;
        }
        sizes[slot] = size;
        threshold[q - q_begin] = bar;
      }
    }
  });

  // Merge each query's lists (one per chunk) and write its top-k in order.
  std::vector<std::vector<Scored>> merged(threads);
  ParallelFor(0, num_queries, num_queries * chunks * capacity < (int64_t{1} << 16) ? 1 : threads,
              [&](int64_t q, int thread_id) {
                std::vector<Scored>& all = merged[thread_id];
                all.clear();
                for (int64_t chunk = 0; chunk < chunks; ++chunk) {
                  const int64_t slot = chunk * num_queries + q;
                  const Scored* list = lists.data() + slot * capacity;
                  all.insert(all.end(), list, list + sizes[slot]);
                }
                WriteTopK(all.data(), static_cast<int64_t>(all.size()), k, negate, out_rows + q * k,
                          out_scores + q * k);
              });
}

}  // namespace lookalike
