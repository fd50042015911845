package probe

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRoundTrip(t *testing.T) {
	want := Table{
		Path("bookstore", Readiness): {Scheme: SchemeHTTP, Port: 14001, Path: "/readiness?full=1", TimeoutSeconds: 2},
		Path("bookstore", Liveness):  {Scheme: SchemeTCP, Port: 14001},
		Path("sidecar-x", Startup):   {Scheme: SchemeHTTPS, Port: 8443, Path: "/startup"},
	}
	s := want.String()
	if !strings.HasPrefix(s, `{"/app-health/bookstore/livez":`) {
		t.Errorf("String() = %s; want JSON with sorted keys", s)
	}
	got, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse(String()) (-want +got):\n%s", diff)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tt := range []struct{ in, wantErr string }{
		{`[]`, "not a JSON object"},
		{`{"/app-health/c/readyz":{"scheme":"HTTP","port":80,"host":"example.com"}}`, "unknown field"},
		{`{"/healthz":{"scheme":"HTTP","port":80}}`, "want /app-health/<container>/"},
		{`{"/app-health/c/ready":{"scheme":"HTTP","port":80}}`, "want /app-health/<container>/"},
		{`{"/app-health//readyz":{"scheme":"HTTP","port":80}}`, "want /app-health/<container>/"},
		{`{"/app-health/c/readyz/x":{"scheme":"HTTP","port":80}}`, "want /app-health/<container>/"},
		{`{"/app-health/c/readyz":{"scheme":"GRPC","port":80}}`, "want HTTP, HTTPS or TCP"},
		{`{"/app-health/c/readyz":{"scheme":"HTTP","port":0}}`, "not a TCP port"},
		{`{"/app-health/c/readyz":{"scheme":"HTTP","port":70000}}`, "not a TCP port"},
		{`{"/app-health/c/readyz":{"scheme":"HTTP","port":80,"path":"readiness"}}`, "must start with /"},
		{`{"/app-health/c/readyz":{"scheme":"HTTP","port":80,"timeoutSeconds":-1}}`, "negative"},
	} {
		_, err := Parse(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Parse(%s) = %v; want an error containing %q", tt.in, err, tt.wantErr)
		}
	}
}
