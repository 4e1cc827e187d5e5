// Rerank: exact scores of each query's own candidate list, and its best k. Scores go through the row
// scorer (score_row.cpp); what is here is choosing the order of the work and selecting the top k.
#include "lookalike/kernels.h"

#include <cmath>
#include <limits>

#include "scoring.h"

namespace lookalike {
namespace {

// Asks the memory system for a row we are about to score, so its fetch overlaps the current one.
inline void PrefetchRow(const float* row, int64_t dim) {
  const char* p = reinterpret_cast<const char*>(row);
  const char* end = reinterpret_cast<const char*>(row + dim);
  for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
}

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

}  // namespace lookalike
