// TopKShared: exact top-k of every query over one shared candidate matrix, blocked like a matrix
// product. The tiles are scored in score_panel.cpp; what is here is the blocking, the threads' work
// items and each query's running top-k (kept entries, thresholds, the radix select and the merge).
#include "lookalike/kernels.h"

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>

#include "scoring.h"

namespace lookalike {
namespace {

// TopKShared's kept entries: a key and its row in one integer whose order is Rerank's (a higher key, then
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
