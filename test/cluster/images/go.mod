// Module images builds the container images the test cluster runs (the pause
// image and, later, test workloads) without a registry or a Docker engine. It
// is a module of its own so that the project's go.mod stays free of
// go-containerregistry.
module github.com/trellis-mesh/trellis/test/cluster/images

go 1.26.8

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
