// The C++ client's calls: requests built from plain types, replies read back, errors thrown as lookalike::Error.
#include "lookalike/client.h"

#include <thread>

namespace lookalike {
namespace {

const char* StatusName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

void Check(const grpc::Status& status) {
  if (!status.ok()) throw Error(status.error_code(), StatusName(status.error_code()), status.error_message());
}

std::vector<v1::IngestRequest> IngestRequests(const IngestItem& item, const std::string& collection) {
  v1::IngestRequest first;
  first.set_collection(collection);
  first.set_id(item.id);
  if (item.metadata.fields_size() > 0) *first.mutable_metadata() = item.metadata;
  if (!item.vector.empty()) {
    first.mutable_vector()->mutable_values()->Add(item.vector.begin(), item.vector.end());
    return {first};
  }
  if (item.image.size() <= kChunkBytes) {
    first.set_image(item.image);
    return {first};
  }
  std::vector<v1::IngestRequest> requests;
  for (size_t start = 0; start < item.image.size(); start += kChunkBytes) {
    v1::IngestRequest request = start == 0 ? first : v1::IngestRequest();
    request.set_collection(collection);
    request.set_id(item.id);
    request.mutable_chunk()->set_data(item.image.substr(start, kChunkBytes));
    request.mutable_chunk()->set_last(start + kChunkBytes >= item.image.size());
    requests.push_back(std::move(request));
  }
  return requests;
}

}  // namespace

Error::Error(grpc::StatusCode code, std::string code_name, std::string details)
    : std::runtime_error(code_name + ": " + details), code(code), code_name(std::move(code_name)),
      details(std::move(details)) {}

v1::Query ByVector(const std::vector<float>& vector) {
  v1::Query query;
  query.mutable_vector()->mutable_values()->Add(vector.begin(), vector.end());
  return query;
}

v1::Query ByImage(std::string image_bytes) {
  v1::Query query;
  query.set_image(std::move(image_bytes));
  return query;
}

v1::Query ById(std::string id) {
  v1::Query query;
  query.set_id(std::move(id));
  return query;
}

Client::Client(const std::string& address, std::string collection,
               std::shared_ptr<grpc::ChannelCredentials> credentials, std::chrono::milliseconds timeout)
    : collection_(std::move(collection)), timeout_(timeout) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  args.SetMaxSendMessageSize(64 * 1024 * 1024);
  channel_ = grpc::CreateCustomChannel(address, credentials, args);
  collections_ = v1::Collections::NewStub(channel_);
  images_ = v1::Images::NewStub(channel_);
}

bool Client::WaitForReady(std::chrono::milliseconds timeout) {
  return channel_->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

void Client::Prepare(grpc::ClientContext& context) const {
  context.set_deadline(std::chrono::system_clock::now() + timeout_);
}

v1::CollectionInfo Client::CreateCollection(const std::string& name, v1::Metric metric, v1::IndexType index_type,
                                            uint32_t dimension) {
  v1::CreateCollectionRequest request;
  request.set_name(name);
  request.set_metric(metric);
  request.set_index_type(index_type);
  request.set_dimension(dimension);
  v1::CollectionInfo reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(collections_->CreateCollection(&context, request, &reply));
  return reply;
}

std::vector<v1::CollectionInfo> Client::ListCollections() {
  v1::ListCollectionsResponse reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(collections_->ListCollections(&context, v1::ListCollectionsRequest(), &reply));
  return {reply.collections().begin(), reply.collections().end()};
}

v1::CollectionInfo Client::DescribeCollection(const std::string& name) {
  v1::DescribeCollectionRequest request;
  request.set_name(Or(name));
  v1::CollectionInfo reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(collections_->DescribeCollection(&context, request, &reply));
  return reply;
}

void Client::DropCollection(const std::string& name) {
  v1::DropCollectionRequest request;
  request.set_name(name);
  v1::DropCollectionResponse reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(collections_->DropCollection(&context, request, &reply));
}

std::vector<IngestResult> Client::Ingest(const std::vector<IngestItem>& items, const std::string& collection,
                                         const std::function<void(const IngestResult&)>& on_result) {
  grpc::ClientContext context;  // no deadline: a stream lasts as long as its items
  auto stream = images_->Ingest(&context);
  // One thread writes while this one reads: the server acknowledges each item once stored.
  std::thread writer([&] {
    for (const auto& item : items) {
      for (const auto& request : IngestRequests(item, Or(collection))) {
        if (!stream->Write(request)) return;  // the stream broke; Finish() says why
      }
    }
    stream->WritesDone();
  });
  std::vector<IngestResult> results;
  v1::IngestResponse reply;
  while (stream->Read(&reply)) {
    results.push_back({reply.id(), v1::StatusCode_Name(reply.code()), reply.message()});
    if (on_result) on_result(results.back());
  }
  writer.join();
  Check(stream->Finish());
  return results;
}

std::vector<std::vector<Hit>> Client::SearchMany(const std::vector<v1::Query>& queries, const SearchOptions& options) {
  v1::SearchRequest request;
  request.set_collection(Or(options.collection));
  for (const auto& query : queries) *request.add_queries() = query;
  request.set_k(options.k);
  request.set_filter(options.filter);
  request.set_include_metadata(options.include_metadata);
  request.set_include_vectors(options.include_vectors);
  v1::SearchResponse reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(images_->Search(&context, request, &reply));
  std::vector<std::vector<Hit>> results;
  for (const auto& result : reply.results()) {
    auto& hits = results.emplace_back();
    for (const auto& hit : result.hits()) {
      hits.push_back({hit.id(), hit.score(), hit.metadata(), {hit.vector().values().begin(), hit.vector().values().end()}});
    }
  }
  return results;
}

std::vector<Hit> Client::Search(const v1::Query& query, const SearchOptions& options) {
  return SearchMany({query}, options).at(0);
}

std::map<std::string, Row> Client::Get(const std::vector<std::string>& ids, const std::string& collection,
                                       bool vectors, bool metadata) {
  v1::GetRequest request;
  request.set_collection(Or(collection));
  for (const auto& id : ids) request.add_ids(id);
  request.set_include_vectors(vectors);
  request.set_include_metadata(metadata);
  v1::GetResponse reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(images_->Get(&context, request, &reply));
  std::map<std::string, Row> rows;
  for (const auto& item : reply.items()) {
    rows[item.id()] = {{item.vector().values().begin(), item.vector().values().end()}, item.metadata()};
  }
  return rows;
}

uint64_t Client::Delete(const std::vector<std::string>& ids, const std::string& collection) {
  v1::DeleteRequest request;
  request.set_collection(Or(collection));
  for (const auto& id : ids) request.add_ids(id);
  v1::DeleteResponse reply;
  grpc::ClientContext context;
  Prepare(context);
  Check(images_->Delete(&context, request, &reply));
  return reply.deleted_count();
}

}  // namespace lookalike
