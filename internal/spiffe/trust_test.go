package spiffe_test

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

func TestTrustVersion(t *testing.T) {
	a, b, i1, i2 := []byte("root a"), []byte("root b"), []byte("inter 1"), []byte("inter 2")
	base := spiffe.TrustVersion([][]byte{a, b}, i1)
	if got := spiffe.TrustVersion([][]byte{b, a}, i1); got != base {
		t.Errorf("bundle order changed the version: %s, want %s", got, base)
	}
	for name, got := range map[string]string{
		"other issuer":   spiffe.TrustVersion([][]byte{a, b}, i2),
		"one root fewer": spiffe.TrustVersion([][]byte{a}, i1),
		"other root":     spiffe.TrustVersion([][]byte{a, i2}, i1),
	} {
		if got == base {
			t.Errorf("%s: version %s, same as the base; want it to differ", name, got)
		}
	}
	if len(base) != 16 {
		t.Errorf("version %q has %d characters, want 16", base, len(base))
	}
}
