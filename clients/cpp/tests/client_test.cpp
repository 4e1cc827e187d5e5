// Runs against a live `lookalike serve` at $LOOKALIKE_SERVER, which the harness starts (make clients-test):
// a 4-d vectors-only collection of its own, and one image search against the model's default collection.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lookalike/client.h"

namespace {

int failures = 0;

#define CHECK(condition)                                                                   \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      std::cerr << __FILE__ << ":" << __LINE__ << ": check failed: " #condition "\n";      \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)

google::protobuf::Struct Label(const std::string& label) {
  google::protobuf::Struct metadata;
  (*metadata.mutable_fields())["label"].set_string_value(label);
  return metadata;
}

std::vector<std::string> Ids(const std::vector<lookalike::Hit>& hits) {
  std::vector<std::string> ids;
  for (const auto& hit : hits) ids.push_back(hit.id);
  return ids;
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

}  // namespace

int main() {
  const std::string server = Env("LOOKALIKE_SERVER");
  if (server.empty()) {
    std::cerr << "set LOOKALIKE_SERVER=HOST:PORT of a running `lookalike serve` (make clients-test does)\n";
    return 1;
  }
  const std::string name = "clients_cpp";
  lookalike::Client client(server, "", grpc::InsecureChannelCredentials(), std::chrono::seconds(30));
  CHECK(client.WaitForReady(std::chrono::seconds(30)));
  try {
    auto created = client.CreateCollection(name, lookalike::v1::METRIC_COSINE, lookalike::v1::INDEX_TYPE_FLAT, 4);
    CHECK(created.dimension() == 4 && created.model().empty());

    // Ingest through the stream: a wrong dimension is that item's error, the stream goes on.
    auto a = Label("x");
    (*a.mutable_fields())["n"].set_number_value(1);
    auto results = client.Ingest({{"a", "", {1, 0, 0, 0}, a},
                                  {"b", "", {0, 1, 0, 0}, Label("y")},
                                  {"short", "", {1, 2, 3}, {}},
                                  {"c", "", {0.9f, 0.1f, 0, 0}, Label("x")}},
                                 name);
    CHECK(results.size() == 4);
    if (results.size() == 4) {
      CHECK(results[0].ok() && results[1].ok() && results[3].ok());
      CHECK(results[2].id == "short" && results[2].code == "INVALID_ARGUMENT");
      CHECK(results[2].message.find("3 dimensions") != std::string::npos);
    }
    CHECK(client.DescribeCollection(name).row_count() == 3);

    // Search by vector, then by id with a filter.
    lookalike::SearchOptions options;
    options.k = 2;
    options.collection = name;
    options.include_metadata = true;
    auto hits = client.Search(lookalike::ByVector({1, 0, 0, 0}), options);
    CHECK((Ids(hits) == std::vector<std::string>{"a", "c"}));
    CHECK(!hits.empty() && std::abs(hits[0].score - 1.0f) < 1e-4f);
    CHECK(!hits.empty() && hits[0].metadata.fields().at("label").string_value() == "x");
    CHECK(!hits.empty() && hits[0].metadata.fields().at("n").number_value() == 1);
    lookalike::SearchOptions filtered;
    filtered.k = 10;
    filtered.collection = name;
    filtered.filter = "metadata[\"label\"] == \"y\"";
    CHECK((Ids(client.Search(lookalike::ById("a"), filtered)) == std::vector<std::string>{"b"}));

    // Get and delete.
    auto rows = client.Get({"a", "missing"}, name);
    CHECK(rows.size() == 1 && rows.count("a") == 1);
    CHECK(rows["a"].vector.size() == 4 && std::abs(rows["a"].vector[0] - 1.0f) < 1e-4f);
    CHECK(rows["a"].metadata.fields().at("label").string_value() == "x");
    CHECK(client.Delete({"a", "missing"}, name) == 1);
    CHECK(client.Get({"a"}, name).empty());

    // An unknown collection fails the whole call with NOT_FOUND.
    try {
      lookalike::SearchOptions unknown;
      unknown.collection = "no_such_collection";
      client.Search(lookalike::ByVector({1, 0, 0, 0}), unknown);
      CHECK(false && "search of an unknown collection did not fail");
    } catch (const lookalike::Error& e) {
      CHECK(e.code == grpc::StatusCode::NOT_FOUND && e.code_name == "NOT_FOUND");
      CHECK(e.details.find("no_such_collection") != std::string::npos);
    }

    client.DropCollection(name);
    try {
      client.DescribeCollection(name);
      CHECK(false && "the dropped collection is still described");
    } catch (const lookalike::Error& e) {
      CHECK(e.code == grpc::StatusCode::NOT_FOUND);
    }

    // One image search against the model's default collection: the same top 3 as the Python client.
    const std::string image = Env("LOOKALIKE_TEST_IMAGE");
    if (!image.empty()) {
      std::ifstream file(image, std::ios::binary);
      std::ostringstream bytes;
      bytes << file.rdbuf();
      lookalike::SearchOptions top3;
      top3.k = 3;
      auto ids = Ids(client.Search(lookalike::ByImage(bytes.str()), top3));
      std::string joined;
      for (const auto& id : ids) joined += (joined.empty() ? "" : ",") + id;
      CHECK(ids.size() == 3);
      const std::string expected = Env("LOOKALIKE_TEST_TOP3");
      if (!expected.empty()) CHECK(joined == expected);
    }
  } catch (const lookalike::Error& e) {
    std::cerr << "unexpected error: " << e.what() << "\n";
    ++failures;
  }
  std::cout << (failures ? "FAILED" : "ok") << ": " << failures << " failed checks\n";
  return failures ? 1 : 0;
}
