module github.com/trellis-mesh/trellis

go 1.26.8

// Pins with a reason:
//   - github.com/prometheus/common stays at v0.72.1: from v0.73 its expfmt imports
//     github.com/pandatix/go-abnf, which the module proxy reachable here refuses.
//   - google.golang.org/grpc is for the control plane only; the sidecar speaks the
//     same protocol through connectrpc.com/connect (test/arch enforces it).

require (
	connectrpc.com/connect v1.21.0
	github.com/google/go-cmp v0.7.0
	github.com/prometheus/client_model v0.6.3
	github.com/prometheus/common v0.72.1
	github.com/spf13/cobra v1.10.1
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	sigs.k8s.io/yaml v1.6.0
)

require (
	github.com/coder/websocket v1.8.15 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	go.yaml.in/yaml/v2 v2.4.4 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
