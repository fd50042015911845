package compile

import (
	"testing"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/model"
	"google.golang.org/protobuf/proto"
)

// FuzzDestinationRequest feeds arbitrary bytes to what the control plane does
// with a sidecar's Destinations.Watch request: decode the protobuf, parse the
// authority, compile the destination on the bookstore mesh. Nothing may
// panic; a parsed authority prints back to the same target; every compiled
// config is sealed with its version.
func FuzzDestinationRequest(f *testing.F) {
	for _, a := range []string{"bookstore.bookstore:14001", "bookstore:14001", "bookstore.bookstore.svc.cluster.local:14001",
		"bookstore.bookstore", "[::1]:80", "a.b.c:99999", ":80", "bookstore.bookstore:0x10", ""} {
		b, _ := proto.Marshal(&proxyv1.DestinationRequest{Authority: a})
		f.Add(b)
	}
	snap := model.Build(bookstore(false, []model.WeightedBackend{{Service: "bookstore-v1", Weight: 1}, {Service: "bookstore-v2", Weight: 1}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var req proxyv1.DestinationRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		tg, err := ParseAuthority(req.GetAuthority(), "bookbuyer")
		if err != nil {
			return
		}
		again, err := ParseAuthority(tg.String(), "elsewhere")
		if err != nil || again != tg {
			t.Fatalf("ParseAuthority(%q) = %v, but its String %q parses to %v, %v", req.GetAuthority(), tg, tg.String(), again, err)
		}
		dc := Destination(snap, tg)
		if dc.GetVersion() == "" || dc.GetAuthority() != tg.String() {
			t.Fatalf("Destination(%v) = version %q authority %q", tg, dc.GetVersion(), dc.GetAuthority())
		}
	})
}
