package controlplane

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/metrics"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/source/translate"
)

// ApplyRequest carries YAML or JSON documents to apply or delete.
type ApplyRequest struct {
	Source string `json:"source"` // file name, for messages
	Data   string `json:"data"`
}

// DeleteRequest names objects to delete, as "Kind namespace/name", or carries
// documents whose objects are to be deleted.
type DeleteRequest struct {
	Objects []string     `json:"objects,omitempty"`
	Apply   ApplyRequest `json:"documents"`
}

// ErrorBody is the body of every admin API error.
type ErrorBody struct {
	Error    string          `json:"error"`
	Problems []model.Problem `json:"problems,omitempty"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// Status is the control plane's view of the mesh.
type Status struct {
	Snapshot  string             `json:"snapshot"`
	Mesh      model.MeshSettings `json:"mesh"`
	Problems  []model.Problem    `json:"problems"`
	Server    serve.Stats        `json:"server"`
	Workloads int                `json:"workloads"`
}

type adminAPI struct {
	store  *local.Store
	srv    *serve.Server
	builds *metrics.Histogram // snapshot build times
	token  string
	log    *slog.Logger
}

// newAdmin serves the admin API, every path behind the admin token except
// GET /metrics, which holds only counts and timings and is scraped as
// Prometheus scrapes any target.
// rot, when not nil, adds the CA's rotation under /v1/ca.
func newAdmin(store *local.Store, srv *serve.Server, builds *metrics.Histogram, token string, log *slog.Logger, rot *rotator) http.Handler {
	a := &adminAPI{store: store, srv: srv, builds: builds, token: token, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/apply", a.apply)
	mux.HandleFunc("POST /v1/delete", a.delete)
	mux.HandleFunc("GET /v1/resources", a.resources)
	mux.HandleFunc("GET /v1/workloads", a.workloads)
	mux.HandleFunc("GET /v1/services", a.services)
	mux.HandleFunc("POST /v1/workloads", a.register)
	mux.HandleFunc("PUT /v1/workloads/{ns}/{name}/ready", a.ready)
	mux.HandleFunc("DELETE /v1/workloads/{ns}/{name}", a.deregister)
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("POST /v1/policy/check", a.policyCheck)
	mux.HandleFunc("GET /v1/versions", a.versions)
	if rot != nil {
		rot.routes(mux)
	}
	// The runtime's profiles (heap, goroutines, CPU), behind the token like
	// everything that is not /metrics: `go tool pprof` with the header
	// "Authorization: Bearer <admin-token>".
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	top := http.NewServeMux()
	top.HandleFunc("GET /metrics", a.metrics)
	top.Handle("/", a.auth(mux))
	return top
}

// metrics writes the control plane's own series in the Prometheus text format.
func (a *adminAPI) metrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	mw := metrics.NewWriter(w)
	a.srv.WriteMetrics(mw)
	mw.Histogram("trellis_controlplane_snapshot_build_seconds", "Time to translate the stored resources and build a model snapshot.", a.builds)
	snap := a.store.Snapshot()
	mw.Gauge("trellis_controlplane_workloads", "Registered workloads in the snapshot being served.", float64(len(snap.Workloads())))
	mw.Gauge("trellis_controlplane_services", "Services in the snapshot being served.", float64(len(snap.Services())))
	if err := mw.Err(); err != nil {
		a.log.Debug("metrics scrape ended early", "error", err)
	}
}

func (a *adminAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: "missing or wrong admin token: the CLI reads it from the state directory's admin-token"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 8<<20)
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	var inv *local.InvalidError
	switch {
	case errors.As(err, &inv):
		writeJSON(w, http.StatusUnprocessableEntity, ErrorBody{Error: "rejected; nothing was changed", Problems: inv.Problems})
	case errors.Is(err, local.ErrNoWorkload):
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: err.Error()})
	default:
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
	}
}

func (a *adminAPI) apply(w http.ResponseWriter, r *http.Request) {
	var req ApplyRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, err)
		return
	}
	rs, err := translate.Decode([]byte(req.Data), req.Source)
	if err != nil {
		writeErr(w, err)
		return
	}
	res, err := a.store.Apply(rs)
	if err != nil {
		writeErr(w, err)
		return
	}
	for _, c := range res.Changes {
		if c.Action != local.Unchanged {
			a.log.Info("resource "+string(c.Action), "object", c.Object)
		}
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *adminAPI) delete(w http.ResponseWriter, r *http.Request) {
	var req DeleteRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, err)
		return
	}
	refs := req.Objects
	if req.Apply.Data != "" {
		rs, err := translate.Decode([]byte(req.Apply.Data), req.Apply.Source)
		if err != nil {
			writeErr(w, err)
			return
		}
		for _, r := range rs {
			refs = append(refs, r.Ref())
		}
	}
	res, err := a.store.Delete(refs)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *adminAPI) resources(w http.ResponseWriter, r *http.Request) {
	kind, ns := r.URL.Query().Get("kind"), r.URL.Query().Get("namespace")
	out := []translate.Resource{}
	for _, res := range a.store.Resources() {
		if (kind == "" || strings.EqualFold(kind, res.Kind)) && (ns == "" || ns == res.Namespace) {
			out = append(out, res)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// services lists the mesh's services with their ports and virtual addresses.
func (a *adminAPI) services(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.store.Snapshot().Services())
}

func (a *adminAPI) workloads(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.store.Workloads())
}

func (a *adminAPI) register(w http.ResponseWriter, r *http.Request) {
	var req local.Registration
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, err)
		return
	}
	id, token, err := a.store.Register(req)
	if err != nil {
		writeErr(w, err)
		return
	}
	a.log.Info("workload registered", "id", id, "identity", req.Namespace+"/"+req.Account)
	writeJSON(w, http.StatusOK, RegisterResponse{ID: id, Token: token})
}

func (a *adminAPI) ready(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Ready bool `json:"ready"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeErr(w, err)
		return
	}
	id := r.PathValue("ns") + "/" + r.PathValue("name")
	if err := a.store.SetReady(id, body.Ready); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ready": body.Ready})
}

func (a *adminAPI) deregister(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ns") + "/" + r.PathValue("name")
	if err := a.store.Deregister(id); err != nil {
		writeErr(w, err)
		return
	}
	a.log.Info("workload deregistered", "id", id)
	writeJSON(w, http.StatusOK, map[string]string{"deregistered": id})
}

func (a *adminAPI) status(w http.ResponseWriter, r *http.Request) {
	snap := a.store.Snapshot()
	problems := a.store.Problems()
	writeJSON(w, http.StatusOK, Status{
		Snapshot: snap.Hash(), Mesh: snap.Mesh(), Problems: problems,
		Server: a.srv.Stats(), Workloads: len(snap.Workloads()),
	})
}

func (a *adminAPI) policyCheck(w http.ResponseWriter, r *http.Request) {
	var q PolicyQuery
	if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
		writeErr(w, err)
		return
	}
	res, err := checkPolicy(a.store.Snapshot(), q)
	if err != nil {
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// versions answers, per workload, the inbound config version its sidecar should
// hold now; `trellis check` compares it with what the sidecar reports.
func (a *adminAPI) versions(w http.ResponseWriter, r *http.Request) {
	snap := a.store.Snapshot()
	out := map[string]string{}
	for _, wl := range snap.Workloads() {
		if ic, err := compile.Inbound(snap, wl.ID); err == nil {
			out[wl.ID] = ic.GetVersion()
		}
	}
	writeJSON(w, http.StatusOK, out)
}
