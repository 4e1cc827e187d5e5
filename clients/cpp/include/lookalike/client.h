// lookalike's C++ client: a small typed layer over the stubs generated from proto/lookalike/v1/lookalike.proto.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "lookalike/v1/lookalike.grpc.pb.h"

namespace lookalike {

// A call failed: `code_name` is the gRPC status name (e.g. "NOT_FOUND"), `details` the server's message.
class Error : public std::runtime_error {
 public:
  Error(grpc::StatusCode code, std::string code_name, std::string details);
  grpc::StatusCode code;
  std::string code_name;
  std::string details;
};

struct Hit {
  std::string id;
  float score = 0;
  google::protobuf::Struct metadata;  // set when SearchOptions::include_metadata
  std::vector<float> vector;          // set when SearchOptions::include_vectors
};

// One item to ingest: image bytes or a precomputed vector (set exactly one), with optional metadata.
struct IngestItem {
  std::string id;
  std::string image;
  std::vector<float> vector;
  google::protobuf::Struct metadata;
};

// The server's answer for one item: code "OK", or the item's own error (the stream goes on).
struct IngestResult {
  std::string id;
  std::string code;
  std::string message;
  bool ok() const { return code == "OK"; }
};

struct SearchOptions {
  int k = 10;
  std::string collection;  // empty: the client's collection, else the server's default
  std::string filter;      // a Milvus boolean expression, e.g. metadata["label"] == "cat"
  bool include_metadata = false;
  bool include_vectors = false;
};

struct Row {
  std::vector<float> vector;
  google::protobuf::Struct metadata;
};

// Queries: a vector, image bytes, or a stored id.
v1::Query ByVector(const std::vector<float>& vector);
v1::Query ByImage(std::string image_bytes);
v1::Query ById(std::string id);

// Images over this size go as several chunk messages of the same id; the server joins them.
constexpr size_t kChunkBytes = 4 * 1024 * 1024;

// Talks to one lookalike server. Thread-safe, as gRPC's stubs are.
class Client {
 public:
  explicit Client(const std::string& address, std::string collection = "",
                  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials(),
                  std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // True once the channel is connected within `timeout`.
  bool WaitForReady(std::chrono::milliseconds timeout);

  v1::CollectionInfo CreateCollection(const std::string& name, v1::Metric metric = v1::METRIC_UNSPECIFIED,
                                      v1::IndexType index_type = v1::INDEX_TYPE_UNSPECIFIED,
                                      uint32_t dimension = 0);
  std::vector<v1::CollectionInfo> ListCollections();
  v1::CollectionInfo DescribeCollection(const std::string& name = "");
  void DropCollection(const std::string& name);

  // Streams the items, one result per item in order; `on_result` (optional) sees each as it arrives.
  std::vector<IngestResult> Ingest(const std::vector<IngestItem>& items, const std::string& collection = "",
                                   const std::function<void(const IngestResult&)>& on_result = {});

  std::vector<std::vector<Hit>> SearchMany(const std::vector<v1::Query>& queries, const SearchOptions& options = {});
  std::vector<Hit> Search(const v1::Query& query, const SearchOptions& options = {});

  // Stored rows by id; ids not stored are absent.
  std::map<std::string, Row> Get(const std::vector<std::string>& ids, const std::string& collection = "",
                                 bool vectors = true, bool metadata = true);
  // Deletes rows by id; returns how many were stored.
  uint64_t Delete(const std::vector<std::string>& ids, const std::string& collection = "");

  // The generated stubs, for calls this class does not wrap (Embed, SearchStream...).
  v1::Images::Stub& images() { return *images_; }
  v1::Collections::Stub& collections() { return *collections_; }

 private:
  void Prepare(grpc::ClientContext& context) const;
  const std::string& Or(const std::string& collection) const { return collection.empty() ? collection_ : collection; }

  std::string collection_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Collections::Stub> collections_;
  std::unique_ptr<v1::Images::Stub> images_;
};

}  // namespace lookalike
