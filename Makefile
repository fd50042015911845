# Trellis build, test and demo. `make help` lists the targets.
SHELL := /usr/bin/env bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/trellis-mesh/trellis/internal/cli.Version=$(VERSION)
FUZZTIME ?= 10s

.PHONY: help build demo test test-unit test-e2e fuzz lint proto clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/trellis and bin/trellis-proxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trellis ./cmd/trellis
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trellis-proxy ./cmd/trellis-proxy

demo: build ## run the bookstore demo until Ctrl-C
	$(BIN)/trellis demo $(DEMO_ARGS)

lint: ## gofmt and go vet
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

test-unit: ## unit, golden and loopback integration tests
	$(GO) test -race -count=1 ./...

fuzz: ## short runs of the fuzz targets
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeTranslate$$' -fuzztime $(FUZZTIME) ./internal/source/translate
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/spiffe

test: lint build test-unit fuzz ## everything CI runs

proto: ## regenerate api/proxy/v1 (needs protoc)
	./hack/genproto.sh

clean:
	rm -rf $(BIN)
