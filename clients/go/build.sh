#!/usr/bin/env bash
# Generates the Go stubs from proto/ into gen/ (never committed) and builds the client and its example with
# Debian's Go packages (GOPATH mode: there is no module proxy here), then runs any command given in that
# environment, e.g. `clients/go/build.sh go test -v lookalike`. Module users generate the same code with
# protoc-gen-go and protoc-gen-go-grpc; the import path comes from the proto's go_package.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto="$(cd "${here}/../../proto" && pwd)"

stub="${here}/gen/lookalike/v1/lookalike.pb.go"
if [ ! -f "${stub}" ] || [ "${proto}/lookalike/v1/lookalike.proto" -nt "${stub}" ]; then
    rm -rf "${here}/gen"
    mkdir -p "${here}/gen"
    protoc -I"${proto}" --go_out="${here}/gen" --go_opt=paths=source_relative \
        --go-grpc_out="${here}/gen" --go-grpc_opt=paths=source_relative "${proto}/lookalike/v1/lookalike.proto"
fi
mkdir -p "${here}/.gopath/src"
# GOPATH mode finds the package `lookalike` (this folder) and `lookalike/gen/lookalike/v1` through this link.
ln -sfn "${here}" "${here}/.gopath/src/lookalike"

export GO111MODULE=off GOPATH="${here}/.gopath:/usr/share/gocode" GOFLAGS="${GOFLAGS:-}"
go vet lookalike lookalike/cmd/lookalike-search-go
go build -o "${here}/.gopath/bin/lookalike-search-go" lookalike/cmd/lookalike-search-go
if [ $# -gt 0 ]; then
    "$@"
fi
