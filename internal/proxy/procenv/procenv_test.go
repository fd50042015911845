package procenv

import (
	"runtime"
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

func TestSetConcurrency(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	t.Setenv("GOMAXPROCS", "")
	if got := SetConcurrency(1); got != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("SetConcurrency(1) = %d, GOMAXPROCS %d; want 1", got, runtime.GOMAXPROCS(0))
	}
	// 0 leaves the runtime's value as it is.
	runtime.GOMAXPROCS(2)
	if got := SetConcurrency(0); got != 2 {
		t.Errorf("SetConcurrency(0) = %d, want the 2 already in effect", got)
	}
	// $GOMAXPROCS, set by the user, wins over the flag.
	t.Setenv("GOMAXPROCS", "2")
	if got := SetConcurrency(1); got != 2 {
		t.Errorf("with GOMAXPROCS=2 set, SetConcurrency(1) = %d, want 2", got)
	}
}
