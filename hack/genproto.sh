#!/usr/bin/env bash
# Regenerates the Go code of api/proxy/v1 from its .proto files. Needs protoc
# (Debian's protobuf-compiler) and the pinned plugins, which it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PATH="$(go env GOPATH)/bin:$PATH" protoc -I . -I /usr/include \
  --go_out=. --go_opt=paths=source_relative \
  api/proxy/v1/proxy.proto
PATH="$(go env GOPATH)/bin:$PATH" protoc -I . -I /usr/include \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  api/proxy/v1/proxyv1grpc/services.proto
