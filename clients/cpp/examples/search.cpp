// lookalike-search-cpp PHOTO [-k K] [--server HOST:PORT] [--collection NAME]: the top k stored ids for a photo.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "lookalike/client.h"

int main(int argc, char** argv) {
  const char* env_server = std::getenv("LOOKALIKE_SERVER");
  std::string server = env_server ? env_server : "localhost:50051";
  std::string collection;
  std::string photo;
  int k = 3;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-k" || arg == "--server" || arg == "--collection") && i + 1 < argc) {
      std::string value = argv[++i];
      if (arg == "-k") k = std::atoi(value.c_str());
      else if (arg == "--server") server = value;
      else collection = value;
    } else if (photo.empty() && arg[0] != '-') {
      photo = arg;
    } else {
      photo.clear();
      break;
    }
  }
  if (photo.empty()) {
    std::cerr << "usage: lookalike-search-cpp PHOTO [-k K] [--server HOST:PORT] [--collection NAME]\n";
    return 2;
  }
  std::ifstream file(photo, std::ios::binary);
  if (!file) {
    std::cerr << "lookalike-search-cpp: cannot read " << photo << "\n";
    return 1;
  }
  std::ostringstream bytes;
  bytes << file.rdbuf();

  lookalike::Client client(server, collection);
  try {
    lookalike::SearchOptions options;
    options.k = k;
    int rank = 0;
    for (const auto& hit : client.Search(lookalike::ByImage(bytes.str()), options)) {
      std::printf("%4d  %8.4f  %s\n", ++rank, hit.score, hit.id.c_str());
    }
  } catch (const lookalike::Error& e) {
    std::cerr << "lookalike-search-cpp: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
