package stat

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTable(t *testing.T) {
	tests := []struct {
		name string
		rows []Row
		want string
	}{
		{
			name: "no rows prints the header",
			want: "NAMESPACE   WORKLOAD   RPS   SUCCESS   P50   P99   REQUESTS\n",
		},
		{
			name: "rows",
			rows: []Row{
				{Namespace: "bookbuyer", Workload: "bookbuyer", Requests: 0, SuccessRate: -1, P50: unknown, P99: unknown},
				{Namespace: "bookstore", Workload: "bookstore-v1", Requests: 400, RPS: 13.333333, SuccessRate: 0.985,
					P50: 1234 * time.Microsecond, P99: 250 * time.Millisecond},
				{Namespace: "bookstore", Workload: "bookstore-v2", Requests: 12, RPS: 0.4, SuccessRate: 1,
					P50: 450 * time.Microsecond, P99: 1500 * time.Millisecond},
				{Namespace: "bookwarehouse", Workload: "bookwarehouse", Requests: 3, RPS: 0.1, SuccessRate: 0,
					P50: 12 * time.Millisecond, P99: 10 * time.Second},
			},
			want: "" +
				"NAMESPACE       WORKLOAD        RPS     SUCCESS   P50      P99      REQUESTS\n" +
				"bookbuyer       bookbuyer       0.00    -         -        -        0\n" +
				"bookstore       bookstore-v1    13.33   98.50%    1.2ms    250ms    400\n" +
				"bookstore       bookstore-v2    0.40    100.00%   0.45ms   1.50s    12\n" +
				"bookwarehouse   bookwarehouse   0.10    0.00%     12ms     10.00s   3\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := Table(&b, tt.rows); err != nil {
				t.Fatalf("Table: %v", err)
			}
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("table (-want +got):\n%s", diff)
			}
		})
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestTableReturnsWriteError(t *testing.T) {
	boom := errors.New("broken pipe")
	if err := Table(failingWriter{boom}, []Row{{Workload: "w"}}); !errors.Is(err, boom) {
		t.Errorf("Table error = %v, want %v", err, boom)
	}
}
