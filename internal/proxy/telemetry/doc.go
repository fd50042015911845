// Package telemetry owns the sidecar's Prometheus metrics and its JSON access
// log: the series the proxy counts on every request and connection, their text
// exposition for the admin server's /metrics, and one JSON line per request.
//
// It sits on the proxy's hot path, so recording a request allocates nothing
// once its label set has been seen, and no string is formatted until a scrape
// or a log line needs it. It imports only the standard library, so that the
// lean proxy binary stays lean; the proxy's listeners and admin server import
// it, and nothing in it reaches back into them.
package telemetry
