package cpbench

import (
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/api/proxy/v1/proxyv1grpc"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// controlPlaneID is the SPIFFE ID the control plane serves with.
var controlPlaneID = spiffe.ID{TrustDomain: model.DefaultTrustDomain, Namespace: "trellis-system", Account: "trellis-control-plane"}

// fleet is the simulated proxies: connections, and one watch per (proxy,
// destination).
type fleet struct {
	o       Options
	conns   []*grpc.ClientConn
	watches []*watch
	// byService lists the indexes of the proxies watching each service.
	byService [][]int32
	ctx       context.Context // of the streams; cancelled by close
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	firstLeft atomic.Int64 // watches still without a first config
	firstDone chan struct{}
	cur       atomic.Pointer[tracker]
	errMu     sync.Mutex
	err       error // first stream error
}

// watch is one Destinations.Watch stream of one proxy.
type watch struct {
	proxy   int32
	service int32
	got     atomic.Int64 // messages received
}

// tracker follows one change to the proxies it affects.
type tracker struct {
	service int32
	arrived func(*proxyv1.DestinationConfig) bool
	start   time.Time
	// at holds, per proxy, 1 + nanoseconds from start to the arrival of the
	// new config; 0 until then.
	at    []atomic.Int64
	left  atomic.Int64
	done  chan struct{}
	other atomic.Int64 // messages on watches of other services
}

// newFleet certifies the client identities and prepares the connections.
func newFleet(ctx context.Context, cp *controlPlane, tokens []string, o Options) (*fleet, error) {
	bundle, err := readBundle(filepath.Join(cp.dir, controlplane.CAFile))
	if err != nil {
		return nil, err
	}
	creds := make([]*spiffe.Credentials, len(tokens))
	for i, tok := range tokens {
		if creds[i], err = certify(ctx, cp.info.GRPC, bundle, tok); err != nil {
			return nil, fmt.Errorf("certifying client identity %d: %w", i, err)
		}
	}
	f := &fleet{o: o, byService: make([][]int32, o.Services), firstDone: make(chan struct{})}
	for c := range o.Connections {
		tc := credentials.NewTLS(spiffe.ClientTLS(creds[c%len(creds)], controlPlaneID.String()))
		// A fixed flow-control window, as a sidecar's net/http2 client has:
		// grpc-go's dynamic window would add a BDP ping, and the server's
		// acknowledgement, to every config received.
		conn, err := grpc.NewClient(cp.info.GRPC, grpc.WithTransportCredentials(tc),
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
		if err != nil {
			f.close()
			return nil, err
		}
		f.conns = append(f.conns, conn)
	}
	for p := range o.Proxies {
		for _, s := range watched(p, o.Watch, o.Services) {
			f.watches = append(f.watches, &watch{proxy: int32(p), service: int32(s)})
			f.byService[s] = append(f.byService[s], int32(p))
		}
	}
	return f, nil
}

func readBundle(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		out = append(out, blk.Bytes)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", path)
	}
	return out, nil
}

// certify obtains a certificate for the join token's identity, as a sidecar
// does: a key made here, server-authenticated TLS, then Identity.Certify.
func certify(ctx context.Context, addr string, bundle [][]byte, token string) (*spiffe.Credentials, error) {
	creds := &spiffe.Credentials{}
	if err := creds.Store(nil, nil, bundle); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(spiffe.ClientTLS(creds, controlPlaneID.String()))))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	key, err := spiffe.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := spiffe.NewCSR(key, spiffe.ID{}) // the credential decides the identity
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := proxyv1grpc.NewIdentityClient(conn).Certify(cctx, &proxyv1.CertifyRequest{Csr: csr, Credential: token})
	if err != nil {
		return nil, err
	}
	if err := creds.Store(resp.GetChain(), key, resp.GetTrustBundle()); err != nil {
		return nil, err
	}
	return creds, nil
}

// connect opens every watch and waits until each has its first config.
func (f *fleet) connect(ctx context.Context, timeout time.Duration) error {
	sctx, cancel := context.WithCancel(context.Background())
	f.ctx, f.cancel = sctx, cancel
	f.firstLeft.Store(int64(len(f.watches)))
	// Open the streams from a few goroutines: each Watch call waits for its
	// connection's TLS handshake the first time.
	var next atomic.Int64
	var wg sync.WaitGroup
	openErr := make(chan error, 1)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(f.watches) || sctx.Err() != nil {
					return
				}
				w := f.watches[i]
				conn := f.conns[int(w.proxy)%len(f.conns)]
				st, err := proxyv1grpc.NewDestinationsClient(conn).Watch(sctx, &proxyv1.DestinationRequest{
					Authority: fmt.Sprintf("%s.%s:%d", serviceName(int(w.service)), serviceNS, port)})
				if err != nil {
					select {
					case openErr <- fmt.Errorf("opening a watch: %w", err):
					default:
					}
					return
				}
				f.wg.Add(1)
				go f.recv(w, st)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-openErr:
		return err
	default:
	}
	select {
	case <-f.firstDone:
		return f.streamErr()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		if err := f.streamErr(); err != nil {
			return err
		}
		return fmt.Errorf("%d of %d watches had no config after %s", f.firstLeft.Load(), len(f.watches), timeout)
	}
}

func (f *fleet) streamErr() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.err
}

// recv reads one watch until its stream ends.
func (f *fleet) recv(w *watch, st grpc.ServerStreamingClient[proxyv1.DestinationConfig]) {
	defer f.wg.Done()
	for {
		m, err := st.Recv()
		if err != nil {
			if f.ctx.Err() == nil {
				f.errMu.Lock()
				if f.err == nil {
					f.err = fmt.Errorf("watch of %s by proxy %d: %w", serviceName(int(w.service)), w.proxy, err)
				}
				f.errMu.Unlock()
			}
			return
		}
		if w.got.Add(1) == 1 {
			if !m.GetFound() {
				f.errMu.Lock()
				if f.err == nil {
					f.err = fmt.Errorf("watch of %s: not found: %s", serviceName(int(w.service)), m.GetReason())
				}
				f.errMu.Unlock()
			}
			if f.firstLeft.Add(-1) == 0 {
				close(f.firstDone)
			}
			continue
		}
		tr := f.cur.Load()
		if tr == nil {
			continue
		}
		if w.service != tr.service {
			tr.other.Add(1)
			continue
		}
		if tr.arrived(m) && tr.at[w.proxy].CompareAndSwap(0, int64(time.Since(tr.start))+1) {
			if tr.left.Add(-1) == 0 {
				close(tr.done)
			}
		}
	}
}

// measure applies ch and waits until every proxy watching its service has the
// new config, or until timeout.
func (f *fleet) measure(ctx context.Context, cp *controlPlane, ch change, timeout time.Duration) (ChangeResult, error) {
	affected := f.byService[ch.service]
	cr := ChangeResult{Kind: ch.kind, Service: serviceName(ch.service) + "." + serviceNS, Affected: len(affected)}
	_, before, err := cp.scrape(ctx)
	if err != nil {
		return cr, err
	}
	tr := &tracker{service: int32(ch.service), arrived: ch.arrived, at: make([]atomic.Int64, f.o.Proxies), done: make(chan struct{})}
	tr.left.Store(int64(len(affected)))
	if len(affected) == 0 {
		close(tr.done)
	}
	tr.start = time.Now()
	f.cur.Store(tr)
	defer f.cur.Store(nil)
	if err := ch.apply(ctx, cp.client); err != nil {
		return cr, fmt.Errorf("%s on %s: %w", ch.kind, cr.Service, err)
	}
	cr.ApplyMillis = millis(time.Since(tr.start))
	var waitErr error
	select {
	case <-tr.done:
	case <-ctx.Done():
		return cr, ctx.Err()
	case <-time.After(timeout):
		waitErr = fmt.Errorf("%w: %s on %s reached %d of %d proxies within %s", ErrNotConverged, ch.kind, cr.Service, len(affected)-int(tr.left.Load()), len(affected), timeout)
		if err := f.streamErr(); err != nil {
			waitErr = fmt.Errorf("%w (first stream error: %v)", waitErr, err)
		}
	}
	// Let stray messages, if any, arrive before counting them.
	time.Sleep(200 * time.Millisecond)
	var times []time.Duration
	for _, p := range affected {
		if v := tr.at[p].Load(); v > 0 {
			times = append(times, time.Duration(v-1))
		}
	}
	slices.Sort(times)
	cr.Received = len(times)
	if len(times) > 0 {
		cr.FirstMillis = millis(times[0])
	}
	cr.P50Millis = millis(percentile(times, 50))
	cr.P90Millis = millis(percentile(times, 90))
	cr.P99Millis = millis(percentile(times, 99))
	cr.P100Millis = millis(percentile(times, 100))
	cr.OtherMessages = tr.other.Load()
	_, after, err := cp.scrape(ctx)
	if err != nil {
		return cr, err
	}
	cr.ServerPushes = int64(after.pushes - before.pushes)
	cr.ServerP99Millis = serverP99(before, after)
	return cr, waitErr
}

// close ends every stream and connection.
func (f *fleet) close() {
	if f.cancel != nil {
		f.cancel()
	}
	for _, c := range f.conns {
		c.Close()
	}
	f.wg.Wait()
}
