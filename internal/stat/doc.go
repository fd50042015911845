// Package stat owns turning metrics scraped from sidecars into golden
// metrics per workload: requests, requests per second, success rate and p50 /
// p99 latency over a window, the way `linkerd viz stat` reports them.
//
// It parses the text that a sidecar serves on /metrics, subtracts an earlier
// scrape from a later one series by series, and prints the result as a table.
// The CLI and the dashboard import it; the proxy never does.
package stat
