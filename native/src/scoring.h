// Internal (not part of lookalike/kernels.h): the two scorers the kernels are built on, each picked once
// per call for the widest vector code this CPU runs (simd.h) and called through a pointer, so the
// callers compile no vector code of their own: one row against a few queries (score_row.cpp, for
// Rerank) and a tile of rows against a panel of packed queries (score_panel.cpp, for TopKShared).
#pragma once

#include <cstdint>

#include "lookalike/kernels.h"

namespace lookalike {

// Scores one candidate row against `count` queries: out[i] = score(cand, queries[i]).
using ScoreRowFn = void (*)(const float* cand, const float* const* queries, int64_t count, int64_t dim,
                            float* out);

// The widest row scorer this CPU runs.
ScoreRowFn PickScoreRow(Metric metric);

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

using ScorePanelFn = void (*)(const TileArgs& args);

struct PanelScorer {
  ScorePanelFn fn;
  int lanes;  // queries per panel (at most 32: a row's hits fit one uint32)
  int rows;   // candidate rows per tile
};

// The widest tile this CPU runs; the narrow tile when every query fits one vector.
PanelScorer PickScorePanel(Metric metric, int64_t num_queries);

}  // namespace lookalike
