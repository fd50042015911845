package procenv

import (
	"slices"
	"testing"
)

func TestGODEBUG(t *testing.T) {
	for in, want := range map[string]string{
		"":                  Setting,
		"http2debug=1":      "http2debug=1," + Setting,
		"schedtrace=1000":   "schedtrace=1000",
		"x=1,schedtrace=50": "x=1,schedtrace=50",
		// The runtime does not trim keys: " schedtrace" is not schedtrace.
		"x=1, schedtrace=50": "x=1, schedtrace=50," + Setting,
		// 0 turns it off, which would not keep the monitor awake.
		"schedtrace=0": "schedtrace=0," + Setting,
	} {
		if got := GODEBUG(in); got != want {
			t.Errorf("GODEBUG(%q) = %q, want %q", in, got, want)
		}
	}
	got := Env([]string{"PATH=/bin", "GODEBUG=madvdontneed=1", "HOME=/root"})
	want := []string{"PATH=/bin", "HOME=/root", "GODEBUG=madvdontneed=1," + Setting}
	if !slices.Equal(got, want) {
		t.Errorf("Env = %q, want %q", got, want)
	}
}
