package identity_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/identity"
)

func TestNewToken(t *testing.T) {
	token, hash, err := identity.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		t.Fatalf("token %q is not base64url: %v", token, err)
	}
	if len(raw) != 32 {
		t.Errorf("token holds %d bytes, want 32", len(raw))
	}
	if got := identity.HashToken(token); got != hash {
		t.Errorf("HashToken(token) = %q, NewToken's hash = %q", got, hash)
	}
	if strings.Contains(hash, token) || len(hash) != 64 {
		t.Errorf("hash %q is not a hex SHA-256", hash)
	}
	other, _, err := identity.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if other == token {
		t.Error("two tokens are equal")
	}
}

func TestHashToken(t *testing.T) {
	// SHA-256 of "abc", from FIPS 180-2.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := identity.HashToken("abc"); got != want {
		t.Errorf("HashToken(abc) = %q, want %q", got, want)
	}
}

func TestTokenMatches(t *testing.T) {
	token, hash, err := identity.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		hash  string
		want  bool
	}{
		{"right token", token, hash, true},
		{"upper-case hash", token, strings.ToUpper(hash), true},
		{"wrong token", token + "x", hash, false},
		{"empty token", "", hash, false},
		{"hash as token", hash, hash, false},
		{"empty hash", token, "", false},
		{"short hash", token, hash[:62], false},
		{"not hex", token, strings.Repeat("z", 64), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := identity.TokenMatches(tt.token, tt.hash); got != tt.want {
				t.Errorf("TokenMatches = %v, want %v", got, tt.want)
			}
		})
	}
}
