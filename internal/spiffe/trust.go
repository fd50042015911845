package spiffe

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
)

// TrustVersion names a state of a certificate authority as a workload sees it:
// the trust bundle (root certificates, DER, in any order) and the intermediate
// that issues leaves (DER). The control plane sends the version of its CA's
// current state; a workload compares it with the version of what its own
// certificate came with and certifies again when they differ, which is how it
// learns of a root rotation without waiting for renewal. It is 16 hex digits.
func TrustVersion(bundle [][]byte, issuer []byte) string {
	sums := make([][sha256.Size]byte, len(bundle))
	for i, der := range bundle {
		sums[i] = sha256.Sum256(der)
	}
	slices.SortFunc(sums, func(a, b [sha256.Size]byte) int { return slices.Compare(a[:], b[:]) })
	h := sha256.New()
	for _, s := range sums {
		h.Write(s[:])
	}
	is := sha256.Sum256(issuer)
	h.Write([]byte{0})
	h.Write(is[:])
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// TrustVersion returns the trust version of the current credentials: their
// bundle and the intermediate that issued the leaf (the chain's second
// certificate). It is empty while there is no leaf or the chain carries no
// intermediate.
func (c *Credentials) TrustVersion() string {
	st := c.cur.Load()
	if st == nil || len(st.m.Chain) < 2 {
		return ""
	}
	return TrustVersion(st.m.Bundle, st.m.Chain[1])
}
