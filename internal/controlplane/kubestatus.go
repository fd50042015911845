package controlplane

import (
	"encoding/json"
	"net/http"
	"sync"

	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// KubeStatus is what a Kubernetes-mode control plane answers at GET /status on
// its health listener, for `trellis check --kubernetes`: read-only, and
// nothing secret (names, versions, validation messages).
type KubeStatus struct {
	Snapshot string             `json:"snapshot"`
	Mesh     model.MeshSettings `json:"mesh"`
	Problems []model.Problem    `json:"problems"`
	Server   serve.Stats        `json:"server"`
	// Workloads are the meshed pods of the snapshot, by ID (namespace/pod).
	Workloads []KubeWorkload `json:"workloads"`
	// StatusWriter says which replica writes status conditions.
	StatusWriter kube.StatusWriter `json:"statusWriter"`
}

// KubeWorkload is one meshed pod as the control plane sees it.
type KubeWorkload struct {
	ID string `json:"id"`
	// Connected says its sidecar holds an inbound stream open now.
	Connected bool `json:"connected"`
	// InboundVersion is the inbound config version its sidecar should hold.
	InboundVersion string `json:"inboundVersion"`
}

// connections counts the open inbound streams per workload
// (serve.ConnectionObserver).
type connections struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *connections) Connected(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[id]++
}

func (c *connections) Disconnected(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[id]--; c.n[id] <= 0 {
		delete(c.n, id)
	}
}

func (c *connections) open(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id] > 0
}

// kubeStatus builds the /status answer from the latest snapshot.
func kubeStatus(snap *model.Snapshot, problems []model.Problem, stats serve.Stats, conns *connections) KubeStatus {
	st := KubeStatus{Snapshot: snap.Hash(), Mesh: snap.Mesh(), Problems: problems, Server: stats, Workloads: []KubeWorkload{}}
	if st.Problems == nil {
		st.Problems = []model.Problem{}
	}
	for _, wl := range snap.Workloads() {
		kw := KubeWorkload{ID: wl.ID, Connected: conns.open(wl.ID)}
		if ic, err := compile.Inbound(snap, wl.ID); err == nil {
			kw.InboundVersion = ic.GetVersion()
		}
		st.Workloads = append(st.Workloads, kw)
	}
	return st
}

func serveJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
