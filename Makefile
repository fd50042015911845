# Trellis build, test and demo. `make help` lists the targets.
SHELL := /usr/bin/env bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/trellis-mesh/trellis/internal/cli.Version=$(VERSION)
# Fuzz budgets are counts of executions, not durations: with a duration, Go up to
# 1.26 can fail a clean run with "context deadline exceeded" when a worker is
# still busy as the time runs out (go.dev/issue/75804). Each count is a few
# seconds here; `make fuzz FUZZ_H1=30s` and the like still explore longer.
FUZZ_TRANSLATE ?= 20000x
FUZZ_SPIFFE ?= 50000x
FUZZ_PREPARE ?= 8000x
FUZZ_H1 ?= 100000x
FUZZ_DESTINATION ?= 50000x
# BUILD_TAGS=pprof builds a sidecar whose admin listener serves /debug/pprof/.
BUILD_TAGS ?=

.PHONY: help build demo test test-deps test-unit test-e2e fuzz lint proto clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/trellis, bin/trellis-proxy and bin/trellis-capture
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trellis ./cmd/trellis
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/trellis-proxy ./cmd/trellis-proxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/trellis-capture ./cmd/trellis-capture

demo: build ## run the bookstore demo until Ctrl-C
	$(BIN)/trellis demo $(DEMO_ARGS)

lint: ## gofmt and go vet
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

test-deps: ## install the Debian packages the tests need (mariadb-server), only what is missing (root)
	./hack/test-deps.sh

test-unit: test-deps ## unit, golden and loopback integration tests
	$(GO) test -race -count=1 ./...

fuzz: ## short runs of the fuzz targets, each bounded by a count of executions
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeTranslate$$' -fuzztime $(FUZZ_TRANSLATE) ./internal/source/translate
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZ_SPIFFE) ./internal/spiffe
	$(GO) test -run '^$$' -fuzz '^FuzzPrepareRequest$$' -fuzztime $(FUZZ_PREPARE) ./internal/proxy
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZ_H1) ./internal/proxy/h1
	$(GO) test -run '^$$' -fuzz '^FuzzDestinationRequest$$' -fuzztime $(FUZZ_DESTINATION) ./internal/compile

test: lint build test-unit fuzz e2e-kube ## everything CI runs (e2e-kube needs root)

proto: ## regenerate api/proxy/v1 (needs protoc)
	./hack/genproto.sh

clean:
	rm -rf $(BIN)

.PHONY: cluster-up cluster-down e2e-kube
KUBE_TESTS ?= ./internal/source/kube/... ./test/kube/...
CLUSTER_DIR ?= $(or $(TRELLIS_CLUSTER_DIR),/tmp/trellis-cluster)

cluster-up: ## bring up a single-node Kubernetes test cluster (root; see test/cluster/README.md)
	./test/cluster/up.sh

cluster-down: ## tear the test cluster down, leaving nothing behind
	./test/cluster/down.sh

e2e-kube: ## bring the test cluster up, run the Kubernetes tests against it, tear it down (root)
	./test/cluster/up.sh
	./test/cluster/images.sh || { ./test/cluster/down.sh; exit 1; }
	TRELLIS_TEST_KUBECONFIG=$(CLUSTER_DIR)/kubeconfig TRELLIS_TEST_KUBECTL=$(CLUSTER_DIR)/kubectl TRELLIS_TEST_IMAGES=1 $(GO) test -p 1 -count=1 $(KUBE_TESTS); \
	  rc=$$?; ./test/cluster/down.sh; exit $$rc

# Benchmarks (bench/): not part of `make test`. `bench` runs the full comparison
# (about 3 minutes) and writes bench/results/latest.json; `bench-smoke` is a short
# one-round run that fails when a configuration breaks or a request fails.
.PHONY: bench bench-smoke bench-scale bench-tools
BENCH_ARGS ?=

bench-tools:
	bench/setup.sh
	$(GO) build -o bench/.bin/trellis-bench ./bench/cmd/trellis-bench

bench: build bench-tools ## compare direct, trellis, nginx and haproxy (3 rounds, ~3 min)
	bench/.bin/trellis-bench --out bench/results/latest.json $(BENCH_ARGS)

bench-smoke: build bench-tools ## a 2 s, 1-round run of the benchmark harness that fails on breakage
	bench/.bin/trellis-bench --duration 2s --warmup 0s --rounds 1 --probes 1 --fail-on-errors --out bench/results/smoke.json $(BENCH_ARGS)

bench-scale: build bench-tools ## sidecar memory with 10, 1,000 and 5,000 services in the mesh (~10 s)
	bench/.bin/trellis-bench --scale 10,1000,5000 --out bench/results/scale.json $(BENCH_ARGS)
