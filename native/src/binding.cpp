// lookalike_server._native: checks and converts numpy arrays, then calls the plain C++ kernels of
// lookalike/kernels.h, releasing the GIL only for long work (see kReleaseGilFrom). No algorithm lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "lookalike/kernels.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using IndexArray = py::array_t<int64_t, py::array::c_style>;

// Work (array elements touched) from which a kernel releases the GIL. Getting it back costs up to one
// switch interval (5 ms) whenever another thread runs Python, as a server's event loop under load does:
// three numpy calls of 0.06 ms each that release it took 39 ms per image beside a busy Python thread.
// Below this size (about a millisecond of work) a kernel keeps the GIL and costs only its own time.
constexpr int64_t kReleaseGilFrom = int64_t{1} << 22;

// Releases the GIL for the scope's lifetime when `work` is at least kReleaseGilFrom.
class ReleaseGilForLongWork {
 public:
  explicit ReleaseGilForLongWork(int64_t work) {
    if (work >= kReleaseGilFrom) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};

std::string Shape(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string DtypeName(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// `obj` as a numpy array of exactly dtype T (no casting) and `ndim` dimensions, else TypeError/ValueError.
template <class T>
py::array CheckedArray(const py::object& obj, const char* name, py::ssize_t ndim, const char* layout) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<T>())) {
    throw py::type_error(std::string(name) + " must have dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " + DtypeName(a));
  }
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D " + layout +
                          ", got shape " + Shape(a));
  }
  return a;
}

// A C-contiguous view of a read-only input (a copy only when it is not contiguous already).
template <class T>
py::array_t<T, py::array::c_style> Contiguous(const py::array& a) {
  auto c = py::array_t<T, py::array::c_style>::ensure(a);
  if (!c) throw std::runtime_error("could not make a C-contiguous copy of a " + Shape(a) + " array");
  return c;
}

// An array a kernel writes in place must be C-contiguous and writable; the error says which it is not.
void RequireWritableContiguous(const py::array& a, const char* name, const char* why, const char* advice) {
  const bool contiguous = a.flags() & py::array::c_style;
  if (contiguous && a.writeable()) return;
  throw py::value_error(std::string(name) + " must be C-contiguous and writable: " + why + " (got " +
                        (contiguous ? "C-contiguous" : "non-contiguous") + ", " +
                        (a.writeable() ? "writable" : "read-only") + ")" + advice);
}

void NormalizeRows(const py::object& obj) {
  py::array a = CheckedArray<float>(obj, "x", 2, "(rows, dim)");
  RequireWritableContiguous(a, "x", "it is normalised in place", "; normalise y = np.array(x, order='C') and use y");
  float* data = static_cast<float*>(a.mutable_data());
  const int64_t rows = a.shape(0);
  const int64_t dim = a.shape(1);
  ReleaseGilForLongWork release(rows * dim);
  lookalike::NormalizeRows(data, rows, dim);
}

void PixelsToTensor(const py::object& pixels_obj, const py::object& table_obj, const py::object& out_obj) {
  py::array pixels = CheckedArray<uint8_t>(pixels_obj, "pixels", 3, "(height, width, 3)");
  if (pixels.shape(2) != 3) throw py::value_error("pixels must be (height, width, 3) RGB, got " + Shape(pixels));
  auto rgb = Contiguous<uint8_t>(pixels);
  auto table = Contiguous<float>(CheckedArray<float>(table_obj, "table", 2, "(3, 256)"));
  if (table.shape(0) != 3 || table.shape(1) != 256) {
    throw py::value_error("table must be (3, 256), got shape " + Shape(table));
  }
  py::array out = CheckedArray<float>(out_obj, "out", 3, "(3, height, width)");
  if (out.shape(0) != 3 || out.shape(1) != rgb.shape(0) || out.shape(2) != rgb.shape(1)) {
    throw py::value_error("out must be (3, " + std::to_string(rgb.shape(0)) + ", " + std::to_string(rgb.shape(1)) +
                          ") for pixels " + Shape(rgb) + ", got " + Shape(out));
  }
  RequireWritableContiguous(out, "out", "the tensor is written into it", "");
  // An image is far below kReleaseGilFrom: this runs with the GIL held, in about a tenth of a millisecond.
  lookalike::PixelsToTensor(rgb.data(), rgb.shape(0), rgb.shape(1), table.data(),
                            static_cast<float*>(out.mutable_data()));
}

// k and threads as the top-k kernels take them, else ValueError.
void CheckKAndThreads(int64_t k, int threads) {
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  if (threads < 0) {
    throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
  }
}

lookalike::Metric ParseMetric(const std::string& name) {
  if (name == "ip") return lookalike::Metric::kInnerProduct;
  if (name == "l2") return lookalike::Metric::kSquaredL2;
  throw py::value_error("metric must be 'ip' or 'l2', got '" + name + "'");
}

py::tuple Rerank(const py::object& queries_obj, const py::object& candidates_obj,
                 const py::object& candidate_rows_obj, int64_t k, const std::string& metric_name,
                 bool reverse, int threads) {
  auto queries = Contiguous<float>(CheckedArray<float>(queries_obj, "queries", 2, "(Q, D)"));
  auto candidates = Contiguous<float>(CheckedArray<float>(candidates_obj, "candidates", 2, "(N, D)"));
  auto rows = Contiguous<int64_t>(CheckedArray<int64_t>(candidate_rows_obj, "candidate_rows", 2, "(Q, C)"));

  const int64_t num_queries = queries.shape(0);
  const int64_t dim = queries.shape(1);
  const int64_t num_candidates = candidates.shape(0);
  const int64_t per_query = rows.shape(1);
  if (candidates.shape(1) != dim) {
    throw py::value_error("candidates must have D = " + std::to_string(dim) + " columns like queries " +
                          Shape(queries) + ", got shape " + Shape(candidates));
  }
  if (rows.shape(0) != num_queries) {
    throw py::value_error("candidate_rows must have one row per query, Q = " + std::to_string(num_queries) +
                          ", got shape " + Shape(rows));
  }
  CheckKAndThreads(k, threads);
  const lookalike::Metric metric = ParseMetric(metric_name);

  const int64_t* row_data = rows.data();
  const int64_t total = num_queries * per_query;
  for (int64_t i = 0; i < total; ++i) {
    const int64_t r = row_data[i];
    if (r < -1 || r >= num_candidates) {
      throw py::value_error("candidate_rows[" + std::to_string(i / per_query) + ", " +
                            std::to_string(i % per_query) + "] = " + std::to_string(r) +
                            " is out of range: expected -1 (padding) or a row in [0, " +
                            std::to_string(num_candidates) + ")");
    }
  }

  IndexArray out_rows({num_queries, k});
  FloatArray out_scores({num_queries, k});
  int64_t* out_rows_data = out_rows.mutable_data();
  float* out_scores_data = out_scores.mutable_data();
  {
    ReleaseGilForLongWork release(total * dim);
    lookalike::Rerank(queries.data(), num_queries, candidates.data(), num_candidates, dim, row_data,
                      per_query, k, metric, reverse, threads, out_rows_data, out_scores_data);
  }
  return py::make_tuple(out_rows, out_scores);
}

py::tuple TopKShared(const py::object& queries_obj, const py::object& candidates_obj, int64_t k,
                     const std::string& metric_name, bool reverse, int threads) {
  auto queries = Contiguous<float>(CheckedArray<float>(queries_obj, "queries", 2, "(Q, D)"));
  auto candidates = Contiguous<float>(CheckedArray<float>(candidates_obj, "candidates", 2, "(N, D)"));
  const int64_t num_queries = queries.shape(0);
  const int64_t dim = queries.shape(1);
  const int64_t num_candidates = candidates.shape(0);
  if (candidates.shape(1) != dim) {
    throw py::value_error("candidates must have D = " + std::to_string(dim) + " columns like queries " +
                          Shape(queries) + ", got shape " + Shape(candidates));
  }
  CheckKAndThreads(k, threads);
  const lookalike::Metric metric = ParseMetric(metric_name);

  IndexArray out_rows({num_queries, k});
  FloatArray out_scores({num_queries, k});
  int64_t* out_rows_data = out_rows.mutable_data();
  float* out_scores_data = out_scores.mutable_data();
  {
    ReleaseGilForLongWork release(num_queries * num_candidates * dim);
    lookalike::TopKShared(queries.data(), num_queries, candidates.data(), num_candidates, dim, k, metric,
                          reverse, threads, out_rows_data, out_scores_data);
  }
  return py::make_tuple(out_rows, out_scores);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "lookalike's native core: image tensors, row normalisation, exact re-ranking and exact top-k over "
            "shared candidates (C++; the GIL is released for long work only).";
  m.def("simd", &lookalike::SimdLevel,
        "The vector code the kernels run: 'avx512', 'avx2' or 'base', the widest this CPU has unless the "
        "LOOKALIKE_SIMD environment variable ('avx2' or 'base', read at the first kernel call) caps it.");
  m.def("pixels_to_tensor", &PixelsToTensor, py::arg("pixels"), py::arg("table"), py::arg("out"),
        "Write an image's uint8 (height, width, 3) RGB pixels into out, a float32 (3, height, width) "
        "C-contiguous array: channel c's byte v becomes table[c, v] (table: float32 (3, 256)).");
  m.def("normalize_rows", &NormalizeRows, py::arg("x"),
        "L2-normalise each row of a float32 (rows, dim) C-contiguous writable array in place; zero rows "
        "stay zero.");
  m.def("rerank", &Rerank, py::arg("queries"), py::arg("candidates"), py::arg("candidate_rows"),
        py::arg("k"), py::arg("metric") = "ip", py::arg("reverse") = false, py::arg("threads") = 0,
        "Score each query's listed candidate rows exactly ('ip' = dot product, best largest; 'l2' = "
        "squared distance, best smallest) and return (rows int64 (Q, k), scores float32 (Q, k)), best "
        "first (worst first if reverse); equal scores rank the smaller row first, padding -1 is skipped, "
        "a short tail is row -1 / score NaN. threads: 0 = all cores.");
  m.def("top_k_shared", &TopKShared, py::arg("queries"), py::arg("candidates"), py::arg("k"),
        py::arg("metric") = "ip", py::arg("reverse") = false, py::arg("threads") = 0,
        "Exact top-k of each query over every row of one shared candidate matrix: (rows int64 (Q, k), "
        "scores float32 (Q, k)) as rerank listing every row for every query gives them ('ip' best "
        "largest, 'l2' squared distance best smallest, reverse = worst first, ties by smaller row, a tail "
        "past N is row -1 / score NaN), without writing the (Q, N) score matrix. Each score is one "
        "sequential sum over the dimensions: its last bits may differ from rerank's, never with the "
        "threads or the other queries. threads: 0 = all cores.");
}
