package controlplane

import (
	"net/http"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/model"
)

func bookstoreMesh(permissive bool) *model.Snapshot {
	ms := model.DefaultMeshSettings()
	ms.Permissive = permissive
	return model.Build(model.Inputs{
		Mesh: &ms,
		Workloads: []model.Workload{
			{ID: "bookstore/bookstore-v1-a", Name: "bookstore-v1", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore"},
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v1", ServicePort: 14001}}, Address: "127.0.0.1:1", Ready: true},
			{ID: "bookstore/bookstore-v2-b", Name: "bookstore-v2", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore-v2"},
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v2", ServicePort: 14001}}, Address: "127.0.0.1:2", Ready: true},
			{ID: "bookbuyer/bookbuyer-c", Name: "bookbuyer", Identity: model.Identity{Namespace: "bookbuyer", Account: "bookbuyer"}, Address: "127.0.0.1:3", Ready: true},
			{ID: "bookthief/bookthief-d", Name: "bookthief", Identity: model.Identity{Namespace: "bookthief", Account: "bookthief"}, Address: "127.0.0.1:4", Ready: true},
		},
		RouteGroups: []model.HTTPRouteGroup{{Key: model.Key{Namespace: "bookstore", Name: "routes"}, Matches: []model.HTTPMatch{
			{Name: "books-bought", PathRegex: "/books-bought", Methods: []string{"GET"}, Headers: map[string]string{"client-app": "bookbuyer"}},
		}}},
		Targets: []model.TrafficTarget{{Key: model.Key{Namespace: "bookstore", Name: "bookstore"}, Destination: model.Identity{Namespace: "bookstore", Account: "bookstore"},
			Sources: []model.Identity{{Namespace: "bookbuyer", Account: "bookbuyer"}},
			Rules:   []model.TrafficRule{{Kind: model.RuleHTTPRouteGroup, Name: "routes"}}}},
	})
}

func TestCheckPolicy(t *testing.T) {
	buyerHeader := http.Header{"Client-App": {"bookbuyer"}}
	tests := []struct {
		name       string
		permissive bool
		q          PolicyQuery
		want       map[string]bool // workload ID → allowed
		decided    string          // in every DecidedBy
		wantErr    string
	}{
		{name: "allowed by the TrafficTarget", q: PolicyQuery{Source: "bookbuyer", Destination: "bookstore/bookstore-v1", Path: "/books-bought", Header: buyerHeader},
			want: map[string]bool{"bookstore/bookstore-v1-a": true}, decided: "TrafficTarget bookstore/bookstore, HTTPRouteGroup bookstore/routes#books-bought"},
		{name: "source not listed", q: PolicyQuery{Source: "bookthief", Destination: "bookstore-v1", Path: "/books-bought", Header: buyerHeader},
			want: map[string]bool{"bookstore/bookstore-v1-a": false}, decided: "no TrafficTarget for spiffe://cluster.local/ns/bookstore/sa/bookstore lists spiffe://cluster.local/ns/bookthief/sa/bookthief"},
		{name: "listed but no rule matches", q: PolicyQuery{Source: "bookbuyer", Destination: "bookstore-v1", Method: "post", Path: "/books-bought", Header: buyerHeader},
			want: map[string]bool{"bookstore/bookstore-v1-a": false}, decided: "none of their rules matches"},
		{name: "service: every workload behind it", q: PolicyQuery{Source: "bookbuyer", Destination: "bookstore.bookstore", Path: "/books-bought", Header: buyerHeader},
			want: map[string]bool{"bookstore/bookstore-v1-a": true, "bookstore/bookstore-v2-b": false}},
		{name: "permissive", permissive: true, q: PolicyQuery{Source: "bookthief", Destination: "bookstore.bookstore"},
			want: map[string]bool{"bookstore/bookstore-v1-a": true, "bookstore/bookstore-v2-b": true}, decided: "permissive mode"},
		{name: "unknown source", q: PolicyQuery{Source: "nobody", Destination: "bookstore-v1"}, wantErr: "not a registered workload"},
		{name: "unknown destination", q: PolicyQuery{Source: "bookbuyer", Destination: "nowhere.bookstore"}, wantErr: "neither a registered workload nor a service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := checkPolicy(bookstoreMesh(tt.permissive), tt.q)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, r := range res {
				got[r.Workload] = r.Allowed
				if tt.decided != "" && !strings.Contains(r.DecidedBy, tt.decided) {
					t.Errorf("%s: decided by %q, want it to contain %q", r.Workload, r.DecidedBy, tt.decided)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("checked %v, want %v", got, tt.want)
			}
			for id, allowed := range tt.want {
				if got[id] != allowed {
					t.Errorf("%s allowed = %v, want %v", id, got[id], allowed)
				}
			}
		})
	}
}
