package serve

import (
	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// encoded is a compiled destination config with its wire bytes, marshalled
// once and sent as they are to every stream watching it. It is a
// proto.Message too (the embedded config), so a gRPC server without Codec
// still sends it correctly, marshalling it per send.
type encoded struct {
	*proxyv1.DestinationConfig
	wire []byte
}

func encode(dc *proxyv1.DestinationConfig) *encoded {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(dc)
	if err != nil {
		panic("serve: compiled config does not marshal: " + err.Error()) // built from plain values
	}
	return &encoded{DestinationConfig: dc, wire: b}
}

// Codec returns the server option that sends pre-marshalled destination
// configs as they are, and everything else with gRPC's protobuf codec. Pass it
// to grpc.NewServer with the server's StatsHandler.
func Codec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2(protocodec.Name)})
}

type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*encoded); ok {
		// The bytes are shared by every stream and never pooled: Free on a
		// SliceBuffer does nothing.
		return mem.BufferSlice{mem.SliceBuffer(e.wire)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c codec) Name() string { return protocodec.Name }
