// The memory-bound kernels that prepare vectors: an image's pixels to the network's normalised input
// (PixelsToTensor), and L2 normalisation of embedding rows (NormalizeRows). Plain loops the compiler
// vectorises are as fast as anything here, so there is no ISA dispatch.
#include "lookalike/kernels.h"

#include <cfloat>
#include <cmath>

namespace lookalike {
namespace {

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

}  // namespace

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

}  // namespace lookalike
