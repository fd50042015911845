package proxy

import (
	"net/http"
	"strings"
)

// gRPC, as far as the sidecar needs it: knowing a gRPC request, labelling its
// status, and refusing it in a way gRPC clients understand. The sidecar
// relays gRPC as HTTP/2 and parses no message.

// isGRPC says whether r is a gRPC call: its content type is application/grpc,
// with or without a subtype such as +proto.
func isGRPC(r *http.Request) bool {
	ct := r.Header["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") &&
		(len(ct[0]) == len("application/grpc") || ct[0][len("application/grpc")] == '+' || ct[0][len("application/grpc")] == ';')
}

// protocolName names r's protocol for the access log: "gRPC", "HTTP/2", or
// the request's own "HTTP/1.1" or "HTTP/1.0".
func protocolName(r *http.Request) string {
	switch {
	case isGRPC(r):
		return "gRPC"
	case r.ProtoMajor == 2:
		return "HTTP/2"
	}
	return r.Proto
}

// grpcStatusLabel maps a grpc-status value to a label value from a fixed set,
// so that a peer cannot grow the number of series: the codes 0 to 16 as
// decimal, else "unknown".
func grpcStatusLabel(v string) string {
	n := 0
	switch len(v) {
	case 1:
		n = int(v[0]) - '0'
	case 2:
		if v[0] < '1' || v[0] > '9' || v[1] < '0' || v[1] > '9' {
			return "unknown"
		}
		n = int(v[0]-'0')*10 + int(v[1]-'0')
	default:
		return "unknown"
	}
	if n < 0 || n > 16 {
		return "unknown"
	}
	return statusTexts[n]
}

// gRPC status codes the sidecar answers with.
const (
	grpcInternal         = 13
	grpcUnavailable      = 14
	grpcPermissionDenied = 7
	grpcDeadlineExceeded = 4
)

// reasonGRPCCode is the gRPC status of a refusal for reason.
func reasonGRPCCode(reason string) int {
	switch reason {
	case ReasonDenied, ReasonEgressDenied:
		return grpcPermissionDenied
	case ReasonTimeout:
		return grpcDeadlineExceeded
	case ReasonBadRequest, ReasonUpgradeFailed:
		return grpcInternal
	}
	return grpcUnavailable
}

// refuseRequest refuses r as refuse does; a gRPC call is answered with a
// trailers-only gRPC response instead (content type application/grpc,
// grpc-status and grpc-message in the headers, no body), so that the client
// sees a status of the sidecar's own, with x-trellis-reason kept as header
// metadata. The HTTP status stays the refusal's, for the metrics.
func refuseRequest(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	if r == nil || !isGRPC(r) {
		refuse(w, code, reason, msg)
		return
	}
	h := w.Header()
	h.Set(ReasonHeader, reason)
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", statusTexts[reasonGRPCCode(reason)])
	h.Set("Grpc-Message", percentEncode("trellis: "+reason+": "+msg))
	w.WriteHeader(code)
}

// percentEncode encodes a grpc-message value: bytes outside printable ASCII,
// and '%', as %XX (the gRPC over HTTP/2 protocol).
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&0xf])
	}
	if b == nil {
		return s
	}
	return string(b)
}
