// Row normalisation, exact re-ranking and exact top-k over shared candidates; see lookalike/kernels.h
// for the contracts.
//
// Scoring uses GCC/Clang vector types so that one template body compiles to SSE, AVX2+FMA or AVX-512
// code; the build targets x86-64-v2, so the wider versions are compiled with target attributes and
// picked at run time from what the CPU supports (as hnswlib does).
#include "lookalike/kernels.h"

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LOOKALIKE_X86 1
#define LOOKALIKE_TARGET(isa) __attribute__((target(isa)))
#endif
#define LOOKALIKE_INLINE inline __attribute__((always_inline))

namespace lookalike {
namespace {

// ---------------------------------------------------------------------------------------------
// Threads.

// Workers that outlive the calls: starting a thread costs tens of microseconds here, a few percent
// of a 3 ms top_k_shared, twice per call. One call at a time uses the pool (the caller holds `busy_`).
class ThreadPool {
 public:
  using Body = void (*)(void* context, int thread_id);

  explicit ThreadPool(long owner) : owner_(owner) {}
  long owner() const { return owner_; }

  // Runs body on this thread (0) and threads - 1 workers; false, having run nothing, if another call
  // holds the pool.
  bool TryRun(int threads, Body body, void* context) {
    std::unique_lock<std::mutex> hold(busy_, std::try_to_lock);
    if (!hold.owns_lock()) return false;
    int helpers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (started_ < threads - 1) {
        try {
          std::thread(&ThreadPool::Work, this, started_ + 1, generation_).detach();
        } catch (...) {  // could not start one: run with those there are
          break;
        }
        ++started_;
      }
      helpers = std::min(threads - 1, started_);
      body_ = body;
      context_ = context;
      wanted_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    if (helpers > 0) wake_.notify_all();
    body(context, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    return true;
  }

 private:
  // Worker `id` (1, 2, ...) runs every call that wants it, starting with the one after `seen`.
  void Work(int id, uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id > wanted_) continue;
      const Body body = body_;
      void* const context = context_;
      lock.unlock();
      body(context, id);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const long owner_;  // the process that started the workers (a forked child has none of them)
  std::mutex busy_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  int started_ = 0;
  uint64_t generation_ = 0;
  Body body_ = nullptr;
  void* context_ = nullptr;
  int wanted_ = 0;
  int pending_ = 0;
};

long ProcessId() {
#if defined(__unix__) || defined(__APPLE__)
  return static_cast<long>(getpid());
#else
  return 0;
#endif
}

// This process's pool. Never destroyed: its workers sleep until the process ends. After a fork the
// child starts its own (the parent's workers do not exist there) and leaves the old one be.
ThreadPool& Pool() {
  static std::atomic<ThreadPool*> current{nullptr};
  const long pid = ProcessId();
  ThreadPool* pool = current.load(std::memory_order_acquire);
  while (pool == nullptr || pool->owner() != pid) {
    ThreadPool* fresh = new ThreadPool(pid);
    if (current.compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first: `pool` now holds it
  }
  return *pool;
}

}  // namespace

void RunOnThreads(int threads, void (*body)(void* context, int thread_id), void* context) {
  if (threads <= 1) {
    body(context, 0);
    return;
  }
  if (Pool().TryRun(threads, body, context)) return;
  // The pool is busy with another call: threads of our own, as many as start.
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(body, context, t);
    } catch (...) {
      break;
    }
  }
  body(context, 0);
  for (auto& helper : helpers) helper.join();
}

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

// The widest vector code this CPU runs, chosen once per process so scores are reproducible within it;
// LOOKALIKE_SIMD=avx2 or =base in the environment caps it (the tests run the narrower code that way).
enum class Isa { kBase, kAvx2, kAvx512 };

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

ScoreRowFn PickScoreRow(Metric metric) {
  const bool l2 = metric == Metric::kSquaredL2;
#ifdef LOOKALIKE_X86
  if (BestIsa() == Isa::kAvx512) return l2 ? ScoreRowL2Avx512 : ScoreRowIpAvx512;
  if (BestIsa() == Isa::kAvx2) return l2 ? ScoreRowL2Avx2 : ScoreRowIpAvx2;
#endif
  return l2 ? ScoreRowL2Base : ScoreRowIpBase;
}

// Bit i set where key[i] is not below bar[i] (NaN keys too: Before keeps them, ranked last).
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

// One tile of TopKShared: `rows` candidate rows (row_stride apart) against one panel of queries, over
// dimensions [0, len) of the already offset `panel` and `rows`. out[m * out_stride + i] = score(row m,
// panel query i); `first` starts from zero, else adds to out. On the last slice `bar` (the panel's lanes'
// thresholds, as keys: higher is better, the score negated if `negate`) is set, and hits[m * hits_stride]
// gets bit i where row m's key for query i is not below bar[i].
struct TileArgs {
  const float* panel;
  const float* rows;
  int64_t row_stride;
  int64_t len;
  bool first;
  float* out;
  int64_t out_stride;
  const float* bar;
  bool negate;
  uint32_t* hits;
  int64_t hits_stride;
};

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

using ScorePanelFn = void (*)(const TileArgs& args);

struct PanelScorer {
  ScorePanelFn fn;
  int lanes;  // queries per panel (at most 32: a row's hits fit one uint32)
  int rows;   // candidate rows per tile
};

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

const char* SimdLevel() {
  switch (BestIsa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
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

namespace {

// TopKShared's kept entries: a key and its row in one integer whose order is Before's (a higher key, then
// a smaller row, is larger; NaN keys are the smallest), so selecting and sorting compare integers.
// Equal floats map to equal bits (-0 is 0 first), so ties still go by row.
inline uint64_t Encode(float key, int64_t row) {
  uint32_t bits;
  const float canonical = key + 0.0f;
  __builtin_memcpy(&bits, &canonical, sizeof(bits));
  // Negative floats order backwards: flip all their bits; positive ones: set the sign bit. No branch on
  // the sign (random while a list fills). NaN last, as 0.
  bits ^= static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u;
  bits = std::isnan(key) ? 0u : bits;
  return (uint64_t{bits} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(row));
}
inline float KeyOf(uint64_t entry) {
  uint32_t bits = static_cast<uint32_t>(entry >> 32);
  bits = (bits & 0x80000000u) ? (bits & 0x7FFFFFFFu) : ~bits;  // 0 (NaN) comes back as a NaN
  float key;
  __builtin_memcpy(&key, &bits, sizeof(key));
  return key;
}
inline int64_t RowOf(uint64_t entry) { return 0xFFFFFFFFu - static_cast<uint32_t>(entry); }

// Raises a query's threshold shared by the chunks to at least `key` (it only ever rises).
inline void RaiseBar(std::atomic<float>& bar, float key) {
  float seen = bar.load(std::memory_order_relaxed);
  while (seen < key && !bar.compare_exchange_weak(seen, key, std::memory_order_relaxed)) {
  }
}

// Moves the `keep` largest of the distinct values v[0, n) to v[0, keep), in no order, and returns the
// smallest of them (0 < keep <= n). A radix select, a byte at a time from the top: a few counting passes
// where nth_element's comparisons of random keys mispredict about half the time (twice as slow here).
uint64_t KeepLargest(uint64_t* v, int64_t n, int64_t keep) {
  // Bytes every value shares say nothing: start at the highest one where they differ (kept lists hold
  // nearby keys, whose sign and exponent bytes are mostly the same).
  uint64_t any = 0;
  uint64_t all = ~uint64_t{0};
  for (int64_t i = 0; i < n; ++i) {
    any |= v[i];
    all &= v[i];
  }
  if (any == all) return v[0];  // one value
  int shift = (63 - __builtin_clzll(any ^ all)) / 8 * 8;
  uint64_t prefix = shift == 56 ? 0 : all & (~uint64_t{0} << (shift + 8));  // the bits above `shift` that
                                                                          // the keep-th largest has
  int64_t need = keep;  // how many of the values with that prefix are among the keep largest
  int top = static_cast<int>((any >> shift) & 255);  // no value has a higher byte at the first shift
  for (; shift >= 0; shift -= 8, top = 255) {
    const uint64_t high = shift == 56 ? 0 : ~uint64_t{0} << (shift + 8);
    // Two tables, so that runs of equal bytes do not wait on one counter's previous increment.
    uint32_t even[256] = {};
    uint32_t odd[256] = {};
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
      even[(v[i] >> shift) & 255] += (v[i] & high) == prefix;
      odd[(v[i + 1] >> shift) & 255] += (v[i + 1] & high) == prefix;
    }
    if (i < n) even[(v[i] >> shift) & 255] += (v[i] & high) == prefix;
    int b = top;
    while (even[b] + odd[b] < need) {
      need -= even[b] + odd[b];
      --b;
    }
    prefix |= uint64_t(b) << shift;
    if (even[b] + odd[b] == need) break;  // values are distinct: at the last byte a bucket holds one
  }
  // The keep largest are exactly the values at or above `prefix` (its bits below `shift` are zero).
  int64_t j = 0;
  uint64_t smallest = ~uint64_t{0};
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t x = v[i];
    v[j] = x;
    const bool kept = x >= prefix;
    j += kept;
    smallest = kept && x < smallest ? x : smallest;
  }
  return smallest;
}

// One work item's running top-k: for each of its queries, its chunk's list and the item's threshold.
struct RunningTopK {
  uint64_t* lists;             // query i's list: lists[i * capacity, + sizes[i])
  int64_t* sizes;
  float* bar;                  // query i's threshold as a key: a lower key cannot be among its best
  std::atomic<float>* shared;  // the thresholds all chunks share
  int64_t capacity;
  int64_t keep;
  int64_t queries;
  bool negate;
};

// Adds the scores of rows [b_begin, b_end) (scores[(r - b_begin) * stride + i] for query i) that passed
// the threshold of their query as it stood when the tiles finished (bit i % lanes of
// hits[(r - b_begin) * panels + i / lanes]) and still pass it.
void AddHits(const RunningTopK& topk, const float* scores, int64_t stride, const uint32_t* hits, int64_t panels,
             int64_t lanes, int64_t b_begin, int64_t b_end) {
  // Locals, so the stores into the lists need not reload them.
  uint64_t* const lists = topk.lists;
  int64_t* const sizes = topk.sizes;
  float* const bar = topk.bar;
  const int64_t capacity = topk.capacity;
  const int64_t keep = topk.keep;
  const int64_t queries = topk.queries;
  const bool negate = topk.negate;
  for (int64_t r = b_begin; r < b_end; ++r) {
    const float* row_scores = scores + (r - b_begin) * stride;
    for (int64_t p = 0; p < panels; ++p) {
      for (uint32_t h = hits[(r - b_begin) * panels + p]; h != 0; h &= h - 1) {
        const int64_t i = p * lanes + __builtin_ctz(h);
        if (i >= queries) continue;  // a padding lane: only a NaN score gets here
        const float key = negate ? -row_scores[i] : row_scores[i];
        if (key < bar[i]) continue;  // false for NaN keys: those go in, and sort last
        uint64_t* list = lists + i * capacity;
        int64_t size = sizes[i];
        if (size == capacity) {
          const float worst = KeyOf(KeepLargest(list, size, keep));
          size = keep;
          if (worst > bar[i]) {
            bar[i] = worst;
            RaiseBar(topk.shared[i], worst);
          }
          if (key < bar[i]) {
            sizes[i] = size;
            continue;
          }
        }
        list[size] = Encode(key, r);
        sizes[i] = size + 1;
      }
    }
  }
}

// Packs queries [first, first + count) (count <= lanes), zero-padded to a whole panel of `lanes`:
// panel[d * lanes + i] = queries[first + i][d]. 16 dimensions at a time, so that the panel lines being
// written stay in L1 (a panel is larger than L1).
void PackPanel(const float* queries, int64_t count, int64_t dim, int64_t lanes, float* panel) {
  const int64_t depth = std::max<int64_t>(dim, 1);
  for (int64_t d0 = 0; d0 < depth; d0 += 16) {
    const int64_t d1 = std::min(depth, d0 + 16);
    for (int64_t i = 0; i < count; ++i) {
      const float* src = queries + i * dim;
      for (int64_t d = d0; d < d1; ++d) panel[d * lanes + i] = d < dim ? src[d] : 0.0f;
    }
    for (int64_t i = count; i < lanes; ++i) {
      for (int64_t d = d0; d < d1; ++d) panel[d * lanes + i] = 0.0f;
    }
  }
}

// Buffers reused by the calls of one thread: fresh pages cost a fault each (a microsecond or more in a
// VM), and a 64 x 2000 x 1280 call needs a few hundred of them. Past kKeepBytes they are let go.
struct SharedScratch {
  static constexpr size_t kKeepBytes = size_t{32} << 20;
  std::vector<float> panels;
  std::vector<uint64_t> lists;
  std::vector<int64_t> sizes;
  struct PerThread {
    std::vector<float> scores;  // a block's rows x its queries
    std::vector<uint32_t> hits; // a block's rows x its panels
    std::vector<float> tail;    // a short last tile's rows, zero-padded to a whole tile
    std::vector<float> bar;     // the item's queries' thresholds, padded lanes +inf
    std::vector<uint64_t> merged;
  };
  std::vector<PerThread> threads;

  size_t Bytes() const {
    size_t bytes = panels.capacity() * sizeof(float) + lists.capacity() * sizeof(uint64_t) +
                   sizes.capacity() * sizeof(int64_t);
    for (const PerThread& t : threads) {
      bytes += (t.scores.capacity() + t.tail.capacity() + t.bar.capacity()) * sizeof(float) +
               t.hits.capacity() * sizeof(uint32_t) + t.merged.capacity() * sizeof(uint64_t);
    }
    return bytes;
  }
};

// v's data, grown to at least n elements (never shrunk: what is there is overwritten, not cleared).
template <class T>
T* Room(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

// Work items are (block of queries, chunk of candidate rows); the queries are packed into panels once
// (see ScorePanelT). Inside an item, candidate rows go in blocks of about 1 MiB that stay in L2, and the
// dimensions in slices whose panel slice stays in L1 while every tile of the block uses it; the scores of
// a block land in a small rows x queries buffer. Each query keeps a threshold (the worst of the best k of
// a chunk so far; the chunks share the highest) that the tiles test their scores against as they finish,
// so a block's selection visits only the scores that pass; those go into a list of up to
// k + max(k / 2, 32) per (chunk, query), cut back to the best k whenever it fills. The last item of a
// block of queries to finish merges their lists; since (key, row) is a total order and a score does not
// depend on the tiling, the answer depends neither on the chunking nor on the threads.
void TopKShared(const float* queries, int64_t num_queries, const float* candidates, int64_t num_candidates,
                int64_t dim, int64_t k, Metric metric, bool reverse, int threads, int64_t* out_rows,
                float* out_scores) {
  if (num_queries <= 0 || k <= 0) return;
  const bool negate = (metric == Metric::kSquaredL2) != reverse;
  auto write_out = [&](int64_t q, const uint64_t* best, int64_t kept) {
    for (int64_t j = 0; j < kept; ++j) {
      out_rows[q * k + j] = RowOf(best[j]);
      const float key = KeyOf(best[j]);
      out_scores[q * k + j] = (negate ? -key : key) + 0.0f;  // scores are never -0: a sum from +0
    }
    for (int64_t j = kept; j < k; ++j) {
      out_rows[q * k + j] = -1;
      out_scores[q * k + j] = std::numeric_limits<float>::quiet_NaN();
    }
  };
  if (num_candidates <= 0) {
    for (int64_t q = 0; q < num_queries; ++q) write_out(q, nullptr, 0);
    return;
  }
  if (num_candidates > int64_t{0xFFFFFFFF}) {  // a kept entry holds its row in 32 bits
    throw std::length_error("top_k_shared takes at most 2^32 - 1 candidates");
  }
  const PanelScorer tile = PickScorePanel(metric, num_queries);
  const int64_t lanes = tile.lanes;
  const int64_t depth = std::max<int64_t>(dim, 1);
  thread_local SharedScratch calling_thread_scratch;
  SharedScratch& scratch = calling_thread_scratch;  // the lambdas below run on other threads too

  const int64_t num_panels = (num_queries + lanes - 1) / lanes;
  float* const panels = Room(scratch.panels, num_panels * lanes * depth);

  // Candidate blocks of about 1 MiB (L2), dimension slices of 256 (a 32 KiB panel slice in L1: 128 made
  // the accumulators go to memory and back twice as often, about 5-10% slower single-threaded).
  const int64_t row_bytes = depth * static_cast<int64_t>(sizeof(float));
  constexpr int64_t kSlice = 256;
  const int64_t block_rows =
      std::clamp<int64_t>((int64_t{1} << 20) / row_bytes / tile.rows, 1, 1024 / tile.rows) * tile.rows;

  // Threads pay off only when there is real work; below ~1M multiply-adds run inline. Queries go in
  // blocks of up to 256 (8 panels, bounding the score buffer), fewer when that gives each thread its own;
  // then the candidates in chunks, enough for about kItemsPerThread items per thread, so that a thread
  // slowed by another process on a shared core leaves its last items to the others.
  threads = num_queries * num_candidates * depth < (int64_t{1} << 20) ? 1 : ResolveThreads(threads);
  constexpr int64_t kItemsPerThread = 2;
  const int64_t panels_per_block =
      std::clamp<int64_t>((num_panels + threads - 1) / threads, 1, std::max<int64_t>(1, 256 / lanes));
  const int64_t query_blocks = (num_panels + panels_per_block - 1) / panels_per_block;
  const int64_t most_chunks = std::max<int64_t>(1, num_candidates / (4 * tile.rows));
  const int64_t chunks =
      threads == 1 ? 1
                   : std::clamp<int64_t>((kItemsPerThread * threads + query_blocks - 1) / query_blocks, 1, most_chunks);
  const int64_t chunk_rows = (num_candidates + chunks - 1) / chunks;
  const int64_t keep = std::min(k, chunk_rows);  // the best `keep` of a chunk are all a query can need
  // Cuts are cheap (KeepLargest): cut often, so the threshold rises early and fewer scores get in.
  const int64_t capacity = keep + std::max<int64_t>(keep / 2, 32);

  uint64_t* const lists = Room(scratch.lists, chunks * num_queries * capacity);
  int64_t* const sizes = Room(scratch.sizes, chunks * num_queries);
  std::fill(sizes, sizes + chunks * num_queries, 0);
  std::unique_ptr<std::atomic<float>[]> shared_bar(new std::atomic<float>[num_queries]);
  for (int64_t q = 0; q < num_queries; ++q) shared_bar[q].store(-std::numeric_limits<float>::infinity());
  if (scratch.threads.size() < static_cast<size_t>(threads)) scratch.threads.resize(threads);
  std::unique_ptr<std::atomic<int64_t>[]> unmerged(new std::atomic<int64_t>[query_blocks]);
  for (int64_t b = 0; b < query_blocks; ++b) unmerged[b].store(chunks, std::memory_order_relaxed);
  // Each block of queries is packed by the first item that needs it (0 unpacked, 1 packing, 2 packed):
  // the threads pack their own blocks side by side, the first while the others wake up.
  std::unique_ptr<std::atomic<int>[]> packed(new std::atomic<int>[query_blocks]);
  for (int64_t b = 0; b < query_blocks; ++b) packed[b].store(0, std::memory_order_relaxed);
  const int64_t stride_most = panels_per_block * lanes;  // floats per candidate row in a score buffer
  const float infinity = std::numeric_limits<float>::infinity();

  ParallelFor(0, query_blocks * chunks, threads, [&](int64_t item, int thread_id) {
    // Query blocks first: with a block per thread, each thread tends to run all the chunks of its own
    // block (a chunk's threshold then starts where the last one ended), and the merges spread out.
    const int64_t query_block = item % query_blocks;
    const int64_t chunk = item / query_blocks;
    const int64_t p_begin = query_block * panels_per_block;
    const int64_t p_end = std::min(num_panels, p_begin + panels_per_block);
    const int64_t q_begin = p_begin * lanes;
    const int64_t q_end = std::min(num_queries, p_end * lanes);
    const int64_t r_begin = chunk * chunk_rows;
    const int64_t r_end = std::min(num_candidates, r_begin + chunk_rows);
    const int64_t item_panels = p_end - p_begin;
    int unpacked = 0;
    if (packed[query_block].compare_exchange_strong(unpacked, 1, std::memory_order_acquire)) {
      for (int64_t p = p_begin; p < p_end; ++p) {
        PackPanel(queries + p * lanes * dim, std::min(lanes, num_queries - p * lanes), dim, lanes,
                  panels + p * lanes * depth);
      }
      packed[query_block].store(2, std::memory_order_release);
    } else {
      while (packed[query_block].load(std::memory_order_acquire) != 2) std::this_thread::yield();
    }
    const int64_t stride = item_panels * lanes;
    SharedScratch::PerThread& mine = scratch.threads[thread_id];
    float* const scores = Room(mine.scores, block_rows * stride_most);
    uint32_t* const hits = Room(mine.hits, block_rows * panels_per_block);
    float* const tail = Room(mine.tail, tile.rows * depth);
    float* const bar = Room(mine.bar, stride_most);
    for (int64_t i = 0; i < stride; ++i) bar[i] = q_begin + i < q_end ? -infinity : infinity;
    const RunningTopK topk{lists + (chunk * num_queries + q_begin) * capacity, sizes + chunk * num_queries + q_begin,
                           bar, shared_bar.get() + q_begin, capacity, keep, q_end - q_begin, negate};

    for (int64_t b_begin = r_begin; b_begin < r_end; b_begin += block_rows) {
      const int64_t b_end = std::min(r_end, b_begin + block_rows);
      // A short last tile is scored from a zero-padded copy; its extra scores are never read.
      const int64_t full_end = b_begin + (b_end - b_begin) / tile.rows * tile.rows;
      if (full_end < b_end) {
        std::fill(tail, tail + tile.rows * depth, 0.0f);
        std::copy(candidates + full_end * dim, candidates + b_end * dim, tail);
      }
      for (int64_t q = q_begin; q < q_end; ++q) {
        bar[q - q_begin] = std::max(bar[q - q_begin], shared_bar[q].load(std::memory_order_relaxed));
      }
      for (int64_t d0 = 0; d0 < depth; d0 += kSlice) {
        const bool last = d0 + kSlice >= depth;
        for (int64_t p = p_begin; p < p_end; ++p) {
          TileArgs args;
          args.panel = panels + p * lanes * depth + d0 * lanes;
          args.row_stride = dim;
          args.len = std::min(kSlice, dim - d0);
          args.first = d0 == 0;
          args.out_stride = stride;
          args.bar = last ? bar + (p - p_begin) * lanes : nullptr;
          args.negate = negate;
          args.hits_stride = item_panels;
          for (int64_t j = b_begin; j < b_end; j += tile.rows) {
            args.rows = (j < full_end ? candidates + j * dim : tail) + d0;
            args.out = scores + (j - b_begin) * stride + (p - p_begin) * lanes;
            args.hits = hits + (j - b_begin) * item_panels + (p - p_begin);
            tile.fn(args);
          }
        }
      }
      AddHits(topk, scores, stride, hits, item_panels, lanes, b_begin, b_end);
    }
    // The last item of a block of queries to finish merges their lists (one per chunk) and writes them.
    if (unmerged[query_block].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::vector<uint64_t>& all = mine.merged;
    for (int64_t q = q_begin; q < q_end; ++q) {
      all.clear();
      const float final_bar = shared_bar[q].load(std::memory_order_relaxed);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t slot = c * num_queries + q;
        const uint64_t* list = lists + slot * capacity;
        for (int64_t j = 0; j < sizes[slot]; ++j) {
          if (!(KeyOf(list[j]) < final_bar)) all.push_back(list[j]);
        }
      }
      const int64_t m = static_cast<int64_t>(all.size());
      const int64_t kept = std::min(k, m);
      if (kept < m) KeepLargest(all.data(), m, kept);
      std::sort(all.begin(), all.begin() + kept, std::greater<uint64_t>());
      write_out(q, all.data(), kept);
    }
  });
  if (scratch.Bytes() > SharedScratch::kKeepBytes) scratch = SharedScratch();
}

}  // namespace lookalike
