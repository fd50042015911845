package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
)

// This file relays one HTTP exchange between a downstream ResponseWriter and an
// upstream round trip, for both listeners: headers end to end, trailers,
// protocol switches (Upgrade, such as WebSocket) and the gRPC status.

var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders deletes the hop-by-hop headers of RFC 9110, section 7.6.1,
// and those the Connection header names.
func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for f != "" {
			var name string
			name, f, _ = strings.Cut(f, ",")
			name = strings.TrimSpace(name)
			// The common options name no header, or one deleted below
			// anyway; skipping them spares Del's canonicalizing copy.
			if name == "" || strings.EqualFold(name, "keep-alive") || strings.EqualFold(name, "close") || strings.EqualFold(name, "upgrade") {
				continue
			}
			h.Del(name)
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
}

// prepareRequest removes the hop-by-hop headers of a request about to be
// forwarded, but keeps what must travel end to end: "TE: trailers" (gRPC
// servers want it) and, for a protocol switch, Upgrade with "Connection:
// Upgrade". It returns the protocol asked for, or "" when the request asks for
// no switch.
func prepareRequest(h http.Header) (upgrade string) {
	te := hasToken(h["Te"], "trailers")
	if hasToken(h["Connection"], "upgrade") {
		if v := h["Upgrade"]; len(v) > 0 {
			upgrade = v[0]
		}
	}
	removeHopHeaders(h)
	if te {
		h["Te"] = []string{"trailers"}
	}
	if upgrade != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{upgrade}
	}
	return upgrade
}

// enableFullDuplex lets an HTTP/1.1 handler write the response while the
// request body is still arriving (net/http otherwise reads the rest of the
// body first), so that the sidecar relays both directions at once as the app
// and its peer do. HTTP/2 is full duplex already; a request without a body
// needs nothing.
func enableFullDuplex(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		http.NewResponseController(w).EnableFullDuplex()
	}
}

// hasToken says whether any of the comma-separated values holds token, in any case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Trailer names the sidecar writes often, prefixed once here rather than per
// response.
const (
	grpcStatusTrailer  = http.TrailerPrefix + "Grpc-Status"
	grpcMessageTrailer = http.TrailerPrefix + "Grpc-Message"
)

// relay relays the upstream's response to a request that asked for the
// protocol upgrade ("" for none): a switch when it asked and the upstream
// agreed, else the response as is. It returns the status written, the reason
// when the sidecar failed the exchange itself, the bytes sent downstream and
// the gRPC status label.
func (p *Proxy) relay(w http.ResponseWriter, resp *http.Response, upgrade string) (status int, reason string, n int64, grpc string) {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		status, n, grpc = copyResponse(w, resp)
		return status, "", n, grpc
	}
	if upgrade == "" {
		resp.Body.Close()
		refuse(w, http.StatusBadGateway, ReasonUpgradeFailed, "the upstream switched protocols, which the request did not ask for")
		return http.StatusBadGateway, ReasonUpgradeFailed, 0, ""
	}
	status, reason, n = p.switchProtocols(w, resp, upgrade)
	return status, reason, n, ""
}

// copyResponse relays an upstream response that does not switch protocols,
// trailers included. It returns the status, the body bytes and the gRPC
// status label ("" when the response carries none).
func copyResponse(w http.ResponseWriter, resp *http.Response) (status int, n int64, grpc string) {
	defer resp.Body.Close()
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	// Trailers announced in the header (HTTP/1.1) are announced downstream too;
	// those that arrive unannounced (gRPC's, over HTTP/2) are written below
	// with http.TrailerPrefix.
	announced := len(resp.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range resp.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = names
	}
	w.WriteHeader(resp.StatusCode)
	bp := bufPool.Get().(*[]byte)
	var dst io.Writer = w
	if resp.ContentLength < 0 {
		dst = flushWriter{w, http.NewResponseController(w)}
	}
	n, _ = io.CopyBuffer(dst, resp.Body, *bp)
	bufPool.Put(bp)
	for k, v := range resp.Trailer {
		switch {
		case announced > 0 && len(resp.Trailer) == announced:
			h[k] = v
		case k == "Grpc-Status":
			h[grpcStatusTrailer] = v
		case k == "Grpc-Message":
			h[grpcMessageTrailer] = v
		default:
			h[http.TrailerPrefix+k] = v
		}
	}
	g := resp.Trailer["Grpc-Status"]
	if len(g) == 0 {
		g = resp.Header["Grpc-Status"] // a trailers-only response
	}
	if len(g) > 0 {
		grpc = grpcStatusLabel(g[0])
	}
	return resp.StatusCode, n, grpc
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// switchProtocols relays a 101 Switching Protocols answer to a request that
// asked for upgrade, then copies bytes both ways between the downstream
// connection, taken over from net/http, and the upstream one, until either
// side ends. It returns the status written and the bytes sent downstream
// after the switch.
func (p *Proxy) switchProtocols(w http.ResponseWriter, resp *http.Response, upgrade string) (int, string, int64) {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), upgrade) {
		resp.Body.Close()
		refuse(w, http.StatusBadGateway, ReasonUpgradeFailed, "the upstream switched to "+resp.Header.Get("Upgrade")+", not the "+upgrade+" asked for")
		return http.StatusBadGateway, ReasonUpgradeFailed, 0
	}
	defer up.Close()
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuse(w, http.StatusInternalServerError, ReasonUpgradeFailed, "cannot take over the connection to switch protocols: "+err.Error())
		return http.StatusInternalServerError, ReasonUpgradeFailed, 0
	}
	if !p.streams.add(down) {
		return http.StatusServiceUnavailable, ReasonNotReady, 0 // draining; down is closed
	}
	defer p.streams.done(down)
	defer down.Close()
	removeHopHeaders(resp.Header)
	resp.Header["Connection"] = []string{"Upgrade"}
	resp.Header["Upgrade"] = []string{upgrade}
	if err := writeSwitch(brw.Writer, resp); err != nil {
		return http.StatusSwitchingProtocols, "", 0
	}
	return http.StatusSwitchingProtocols, "", pipeUpgraded(down, brw.Reader, up)
}

// writeSwitch writes the 101 status line and headers.
func writeSwitch(bw *bufio.Writer, resp *http.Response) error {
	bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	if err := resp.Header.Write(bw); err != nil {
		return err
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// pipeUpgraded copies both ways between a switched connection's two sides
// until either ends, then closes both (an upgraded protocol such as WebSocket
// has its own close handshake, so there is no half-close to carry). br holds
// bytes the client sent after its request, before the switch. It returns the
// bytes sent to down.
func pipeUpgraded(down net.Conn, br *bufio.Reader, up io.ReadWriteCloser) int64 {
	var src io.Reader = down
	if br.Buffered() > 0 {
		src = io.MultiReader(io.LimitReader(br, int64(br.Buffered())), down)
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, src)
		up.Close()
		down.Close()
		close(done)
	}()
	n, _ := io.Copy(down, up)
	down.Close()
	up.Close()
	<-done
	return n
}
