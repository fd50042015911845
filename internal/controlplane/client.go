package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// Client calls a local control plane's admin API.
type Client struct {
	StateDir string
	Info     Info
	token    string
	hc       *http.Client
}

// ErrNotRunning means no control plane serves the state directory.
var ErrNotRunning = errors.New("no control plane is running for this state directory: start one with `trellis control-plane` or `trellis demo`")

// Dial reads the state directory and returns a client of its control plane.
func Dial(stateDir string) (*Client, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, InfoFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (state directory %s)", ErrNotRunning, stateDir)
	}
	if err != nil {
		return nil, err
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", InfoFile, err)
	}
	tok, err := os.ReadFile(filepath.Join(stateDir, TokenFile))
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	return &Client{StateDir: stateDir, Info: info, token: string(tok), hc: &http.Client{Timeout: 30 * time.Second}}, nil
}

// APIError is an error answered by the admin API.
type APIError struct {
	Status int
	Body   ErrorBody
}

func (e *APIError) Error() string {
	if len(e.Body.Problems) == 0 {
		return e.Body.Error
	}
	var b strings.Builder
	b.WriteString(e.Body.Error)
	for _, p := range e.Body.Problems {
		b.WriteString("\n  " + p.Error())
	}
	return b.String()
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body *bytes.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	} else {
		body = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.Info.Admin+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (nothing answers at %s; %s is left from one that stopped)", ErrNotRunning, c.Info.Admin, InfoFile)
		}
		return fmt.Errorf("control plane at %s: %w", c.Info.Admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
			eb.Error = resp.Status
		}
		return &APIError{Status: resp.StatusCode, Body: eb}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Apply applies documents.
func (c *Client) Apply(ctx context.Context, source string, data []byte) (local.Result, error) {
	var res local.Result
	err := c.do(ctx, http.MethodPost, "/v1/apply", ApplyRequest{Source: source, Data: string(data)}, &res)
	return res, err
}

// Delete deletes the objects named, or those in documents.
func (c *Client) Delete(ctx context.Context, req DeleteRequest) (local.Result, error) {
	var res local.Result
	err := c.do(ctx, http.MethodPost, "/v1/delete", req, &res)
	return res, err
}

// Resources lists stored resources; kind and namespace filter when not empty.
func (c *Client) Resources(ctx context.Context, kind, namespace string, out any) error {
	q := "/v1/resources?kind=" + kind + "&namespace=" + namespace
	return c.do(ctx, http.MethodGet, q, nil, out)
}

// Services lists the mesh's services, with their ports and virtual addresses.
func (c *Client) Services(ctx context.Context) ([]model.Service, error) {
	var out []model.Service
	return out, c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
}

// Workloads lists registrations.
func (c *Client) Workloads(ctx context.Context) ([]local.WorkloadStatus, error) {
	var out []local.WorkloadStatus
	err := c.do(ctx, http.MethodGet, "/v1/workloads", nil, &out)
	return out, err
}

// Register registers a workload.
func (c *Client) Register(ctx context.Context, r local.Registration) (RegisterResponse, error) {
	var out RegisterResponse
	err := c.do(ctx, http.MethodPost, "/v1/workloads", r, &out)
	return out, err
}

// SetReady marks a workload ready or not.
func (c *Client) SetReady(ctx context.Context, id string, ready bool) error {
	return c.do(ctx, http.MethodPut, "/v1/workloads/"+id+"/ready", map[string]bool{"ready": ready}, nil)
}

// Deregister removes a workload.
func (c *Client) Deregister(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/workloads/"+id, nil, nil)
}

// Status returns the control plane's view of the mesh.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

// CheckPolicy asks whether a source workload may make a request of a
// destination workload or service.
func (c *Client) CheckPolicy(ctx context.Context, q PolicyQuery) ([]PolicyCheck, error) {
	var out []PolicyCheck
	err := c.do(ctx, http.MethodPost, "/v1/policy/check", q, &out)
	return out, err
}

// InboundVersions returns the inbound config version each workload's sidecar
// should hold, by workload ID.
func (c *Client) InboundVersions(ctx context.Context) (map[string]string, error) {
	var out map[string]string
	err := c.do(ctx, http.MethodGet, "/v1/versions", nil, &out)
	return out, err
}

// CA returns the certificate authority's status and what each sidecar holds.
func (c *Client) CA(ctx context.Context) (CAStatus, error) {
	var out CAStatus
	err := c.do(ctx, http.MethodGet, "/v1/ca", nil, &out)
	return out, err
}

// RotateStep takes one step of a root rotation (StepPrepare, StepActivate or
// StepFinish) and returns the status after it. A step out of order is an
// *APIError with status 409.
func (c *Client) RotateStep(ctx context.Context, step string) (CAStatus, error) {
	var out CAStatus
	err := c.do(ctx, http.MethodPost, "/v1/ca/"+step, nil, &out)
	return out, err
}
