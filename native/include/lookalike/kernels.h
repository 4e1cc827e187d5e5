// Plain C++ kernels for the lookalike hot path: image tensors, row normalisation, exact re-ranking
// and exact top-k over shared candidates.
// No Python here: native/src/binding.cpp checks and converts arrays, then calls these.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lookalike {

enum class Metric {
  kInnerProduct,  // dot product, larger is better
  kSquaredL2,     // squared Euclidean distance, smaller is better
};

// Threads to use for `requested` (0 = all hardware threads), never fewer than one.
inline int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs body(context, t) for t = 0 on the calling thread and for t = 1 .. threads - 1 on other threads,
// and returns when all have returned. The others are the parked workers of a process-wide pool (started
// on first use; between calls they sleep, they never spin), or new threads while another call holds the
// pool. A thread that cannot be started is left out, so body must not count on every t running.
void RunOnThreads(int threads, void (*body)(void* context, int thread_id), void* context);

// Calls fn(i, thread_id) for every i in [start, end) on up to `threads` threads (0 = all hardware
// threads), the calling thread included; thread_id is in [0, threads). Items are handed out one at a
// time, so make each item a useful amount of work. The first exception thrown by fn stops the
// remaining items and is rethrown here, on the calling thread.
template <class Function>
void ParallelFor(int64_t start, int64_t end, int threads, Function fn) {
  if (end <= start) return;
  threads = static_cast<int>(std::min<int64_t>(ResolveThreads(threads), end - start));
  if (threads == 1) {
    for (int64_t i = start; i < end; ++i) fn(i, 0);
    return;
  }

  std::atomic<int64_t> next(start);
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](int thread_id) {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= end) return;
      try {
        fn(i, thread_id);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(end, std::memory_order_relaxed);
        return;
      }
    }
  };
  RunOnThreads(
      threads, [](void* context, int thread_id) { (*static_cast<decltype(worker)*>(context))(thread_id); },
      &worker);
  if (error) std::rethrow_exception(error);
}

// The vector code the kernels run: "avx512", "avx2" (with FMA) or "base" (SSE4.2 on x86), the widest
// this CPU has unless LOOKALIKE_SIMD=avx2 or =base caps it; fixed for the life of the process.
const char* SimdLevel();

// Dot product of two length-`dim` vectors.
float InnerProduct(const float* a, const float* b, int64_t dim);

// Squared Euclidean distance between two length-`dim` vectors.
float SquaredL2(const float* a, const float* b, int64_t dim);

// L2-normalises each of the `rows` rows of the row-major matrix x (rows x dim) in place.
// A zero row stays zero. threads: 0 = all hardware threads; small inputs run on the calling thread.
void NormalizeRows(float* x, int64_t rows, int64_t dim, int threads = 0);

// An image's pixels (height x width x 3 bytes, RGB, row-major) to the network's planar input
// (3 x height x width floats): channel c's byte v becomes table[c * 256 + v].
void PixelsToTensor(const uint8_t* pixels, int64_t height, int64_t width, const float* table, float* out);

// Exact re-ranking. For each of the num_queries queries (row-major, num_queries x dim), scores the
// candidates listed in its row of candidate_rows (num_queries x per_query; entries index the
// num_candidates x dim matrix `candidates`, -1 = padding, a row listed twice counts once) and writes
// the best k, best first (worst first if reverse), to out_rows / out_scores (num_queries x k each).
// Equal scores rank the smaller candidate row first. Where a query has fewer than k candidates the
// tail is row -1, score NaN. Entries must be -1 or in [0, num_candidates); the caller checks that.
void Rerank(const float* queries, int64_t num_queries, const float* candidates, int64_t num_candidates,
            int64_t dim, const int64_t* candidate_rows, int64_t per_query, int64_t k, Metric metric,
            bool reverse, int threads, int64_t* out_rows, float* out_scores);

// Exact top-k over one shared candidate matrix: for each of the num_queries queries (row-major,
// num_queries x dim), scores every row of `candidates` (num_candidates x dim) and writes the best k,
// best first (worst first if reverse), to out_rows / out_scores (num_queries x k each). The same
// order, ties (smaller row first) and padding (row -1, score NaN past num_candidates) as Rerank with
// every row listed for every query, but blocked like a matrix product: tiles of candidates x queries
// accumulate in registers and each query keeps a running top-k, so the num_queries x num_candidates
// score matrix is never written. A score is one sequential sum over the dimensions, so its last bits
// may differ from Rerank's (which sums in vector lanes) but never depend on the other queries, the
// threads or the shapes. threads: 0 = all hardware threads. num_candidates must be below 2^32
// (std::length_error otherwise). The calling thread keeps its work buffers (up to 32 MiB) for its next call.
void TopKShared(const float* queries, int64_t num_queries, const float* candidates, int64_t num_candidates,
                int64_t dim, int64_t k, Metric metric, bool reverse, int threads, int64_t* out_rows,
                float* out_scores);

}  // namespace lookalike
