//go:build !pprof

package proxy

import "net/http"

// Without the pprof build tag the admin listener serves no profiles; see
// admin_pprof.go.

const profilesServed = false

func addProfiles(*http.ServeMux) {}
