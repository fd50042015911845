package serve

import (
	"testing"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/protobuf/proto"
)

// TestCodecSendsSharedBytes: an encoded config goes out as its own bytes, the
// same array for every stream; other messages are marshalled as usual.
func TestCodecSendsSharedBytes(t *testing.T) {
	c := codec{proto: encoding.GetCodecV2(protocodec.Name)}
	e := encode(&proxyv1.DestinationConfig{Version: "v1", Authority: "bookstore.bookstore:14001", Found: true})
	for i := range 2 {
		bs, err := c.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got := bs.Materialize()
		if len(bs) != 1 || &bs[0].ReadOnlyData()[0] != &e.wire[0] {
			t.Errorf("send %d: the bytes are a copy, want the shared wire bytes", i)
		}
		var back proxyv1.DestinationConfig
		if err := proto.Unmarshal(got, &back); err != nil || !proto.Equal(&back, e.DestinationConfig) {
			t.Errorf("send %d: bytes decode to %v (%v), want %v", i, &back, err, e.DestinationConfig)
		}
	}
	ic := &proxyv1.InboundConfig{Version: "x", Identity: "spiffe://cluster.local/ns/a/sa/b"}
	bs, err := c.Marshal(ic)
	if err != nil {
		t.Fatal(err)
	}
	var back proxyv1.InboundConfig
	if err := c.Unmarshal(bs, &back); err != nil || !proto.Equal(&back, ic) {
		t.Errorf("inbound config round trip: %v (%v), want %v", &back, err, ic)
	}
}
