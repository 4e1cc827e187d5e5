// search_load: N closed-loop Search callers against one lookalike server for a fixed time, in C++ over the
// generated stubs, so that the client side takes as little of a shared machine's CPU as it can. Prints one
// JSON object: calls, errors, QPS, latency percentiles, and the CPU this process used.
//
//   search_load --server HOST:PORT --collection NAME [--threads 32] [--seconds 10] [--k 10]
//               [--channels 4] [--by vector|id] [--ids FILE]
// Queries are random unit vectors of the collection's dimension, or ids read from FILE (one per line).
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "lookalike/v1/lookalike.grpc.pb.h"

namespace {

struct Options {
  std::string server = "localhost:50051";
  std::string collection;
  int threads = 32;
  double seconds = 10;
  int k = 10;
  int channels = 4;
  std::string by = "vector";
  std::string ids_file;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + flag);
    std::string value = argv[++i];
    if (flag == "--server") o.server = value;
    else if (flag == "--collection") o.collection = value;
    else if (flag == "--threads") o.threads = std::stoi(value);
    else if (flag == "--seconds") o.seconds = std::stod(value);
    else if (flag == "--k") o.k = std::stoi(value);
    else if (flag == "--channels") o.channels = std::stoi(value);
    else if (flag == "--by") o.by = value;
    else if (flag == "--ids") o.ids_file = value;
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (o.threads < 1 || o.channels < 1 || o.seconds <= 0 || o.k < 1) throw std::invalid_argument("bad numbers");
  if (o.by != "vector" && o.by != "id") throw std::invalid_argument("--by must be vector or id");
  if (o.by == "id" && o.ids_file.empty()) throw std::invalid_argument("--by id needs --ids FILE");
  return o;
}

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto s = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return NAN;
  size_t at = std::min(sorted.size() - 1, static_cast<size_t>(p * (sorted.size() - 1) + 0.5));
  return sorted[at];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = Parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "search_load: " << e.what() << "\n";
    return 2;
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < o.channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection of its own per channel
    channels.push_back(grpc::CreateCustomChannel(o.server, grpc::InsecureChannelCredentials(), args));
  }
  lookalike::v1::DescribeCollectionRequest describe;
  describe.set_name(o.collection);
  lookalike::v1::CollectionInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto status = lookalike::v1::Collections::NewStub(channels[0])->DescribeCollection(&context, describe, &info);
    if (!status.ok()) {
      std::cerr << "search_load: DescribeCollection: " << status.error_message() << "\n";
      return 1;
    }
  }
  std::vector<std::string> ids;
  if (o.by == "id") {
    std::ifstream file(o.ids_file);
    for (std::string line; std::getline(file, line);) if (!line.empty()) ids.push_back(line);
    if (ids.empty()) {
      std::cerr << "search_load: no ids in " << o.ids_file << "\n";
      return 2;
    }
  }
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(o.threads);
  std::vector<long> errors(o.threads, 0);
  double cpu_before = CpuSeconds();
  auto started = std::chrono::steady_clock::now();
  std::vector<std::thread> callers;
  for (int t = 0; t < o.threads; ++t) {
    callers.emplace_back([&, t] {
      auto stub = lookalike::v1::Images::NewStub(channels[t % channels.size()]);
      std::mt19937 rng(1000 + t);
      std::normal_distribution<float> normal;
      lookalike::v1::SearchRequest request;
      request.set_collection(o.collection);
      request.set_k(o.k);
      auto* query = request.add_queries();
      while (!stop.load(std::memory_order_relaxed)) {
        if (o.by == "id") {
          query->set_id(ids[rng() % ids.size()]);
        } else {
          auto* values = query->mutable_vector()->mutable_values();
          values->Clear();
          double norm = 0;
          std::vector<float> v(info.dimension());
          for (auto& x : v) norm += static_cast<double>(x = normal(rng)) * x;
          for (auto x : v) values->Add(static_cast<float>(x / std::sqrt(norm)));
        }
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        lookalike::v1::SearchResponse response;
        auto begin = std::chrono::steady_clock::now();
        auto status = stub->Search(&context, request, &response);
        auto end = std::chrono::steady_clock::now();
        if (status.ok()) latencies[t].push_back(std::chrono::duration<double>(end - begin).count());
        else ++errors[t];
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
  stop = true;
  for (auto& caller : callers) caller.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  double cpu = CpuSeconds() - cpu_before;
  std::vector<double> all;
  long failed = 0;
  for (int t = 0; t < o.threads; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    failed += errors[t];
  }
  std::sort(all.begin(), all.end());
  std::printf(
      "{\"client\": \"search_load (C++)\", \"by\": \"%s\", \"threads\": %d, \"channels\": %d, \"k\": %d, "
      "\"seconds\": %.2f, \"calls\": %zu, \"errors\": %ld, \"qps\": %.1f, \"p50_ms\": %.2f, \"p99_ms\": %.2f, "
      "\"client_cpu_s\": %.2f, \"client_cores\": %.3f}\n",
      o.by.c_str(), o.threads, o.channels, o.k, elapsed, all.size(), failed, all.size() / elapsed,
      Percentile(all, 0.5) * 1e3, Percentile(all, 0.99) * 1e3, cpu, cpu / elapsed);
  return failed && all.empty() ? 1 : 0;
}
