package spiffe_test

import (
	"crypto/x509"
	"errors"
	"go/parser"
	"go/token"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

func TestParse(t *testing.T) {
	long := strings.Repeat("a", 2040)
	tests := []struct {
		name string
		in   string
		want spiffe.ID // zero: an error is expected
	}{
		{"plain", "spiffe://cluster.local/ns/bookstore/sa/bookbuyer", spiffe.ID{TrustDomain: "cluster.local", Namespace: "bookstore", Account: "bookbuyer"}},
		{"segment characters", "spiffe://td-1_x/ns/a.b-c_d/sa/Svc.Account-1_2", spiffe.ID{TrustDomain: "td-1_x", Namespace: "a.b-c_d", Account: "Svc.Account-1_2"}},
		{"empty", "", spiffe.ID{}},
		{"other scheme", "https://cluster.local/ns/a/sa/b", spiffe.ID{}},
		{"upper-case scheme", "SPIFFE://cluster.local/ns/a/sa/b", spiffe.ID{}},
		{"no path", "spiffe://cluster.local", spiffe.ID{}},
		{"root path", "spiffe://cluster.local/", spiffe.ID{}},
		{"empty trust domain", "spiffe:///ns/a/sa/b", spiffe.ID{}},
		{"upper-case trust domain", "spiffe://Cluster.local/ns/a/sa/b", spiffe.ID{}},
		{"trailing dot in trust domain", "spiffe://cluster.local./ns/a/sa/b", spiffe.ID{}},
		{"empty label in trust domain", "spiffe://cluster..local/ns/a/sa/b", spiffe.ID{}},
		{"port", "spiffe://cluster.local:8443/ns/a/sa/b", spiffe.ID{}},
		{"user info", "spiffe://me@cluster.local/ns/a/sa/b", spiffe.ID{}},
		{"query", "spiffe://cluster.local/ns/a/sa/b?x=1", spiffe.ID{}},
		{"fragment", "spiffe://cluster.local/ns/a/sa/b#x", spiffe.ID{}},
		{"percent-encoding", "spiffe://cluster.local/ns/a%2Fb/sa/b", spiffe.ID{}},
		{"trailing slash", "spiffe://cluster.local/ns/a/sa/b/", spiffe.ID{}},
		{"double slash", "spiffe://cluster.local//ns/a/sa/b", spiffe.ID{}},
		{"extra segment", "spiffe://cluster.local/ns/a/sa/b/c", spiffe.ID{}},
		{"empty namespace", "spiffe://cluster.local/ns//sa/b", spiffe.ID{}},
		{"empty account", "spiffe://cluster.local/ns/a/sa/", spiffe.ID{}},
		{"dot-dot namespace", "spiffe://cluster.local/ns/../sa/b", spiffe.ID{}},
		{"dot account", "spiffe://cluster.local/ns/a/sa/.", spiffe.ID{}},
		{"wrong keywords", "spiffe://cluster.local/namespace/a/sa/b", spiffe.ID{}},
		{"swapped keywords", "spiffe://cluster.local/sa/a/ns/b", spiffe.ID{}},
		{"space", "spiffe://cluster.local/ns/a b/sa/b", spiffe.ID{}},
		{"too long", "spiffe://cluster.local/ns/" + long + "/sa/b", spiffe.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := spiffe.Parse(tt.in)
			if tt.want.IsZero() {
				if !errors.Is(err, spiffe.ErrInvalidID) {
					t.Fatalf("Parse(%q) = %+v, %v; want an error wrapping ErrInvalidID", tt.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			}
			if s := got.String(); s != tt.in {
				t.Errorf("String() = %q, want %q", s, tt.in)
			}
		})
	}
}

func TestIDString(t *testing.T) {
	tests := []struct {
		id   spiffe.ID
		want string
	}{
		{spiffe.ID{}, ""},
		{spiffe.ID{TrustDomain: "td", Namespace: "n", Account: "a"}, "spiffe://td/ns/n/sa/a"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.id, got, tt.want)
		}
		if tt.want != "" {
			if got := tt.id.URL().String(); got != tt.want {
				t.Errorf("%+v.URL() = %q, want %q", tt.id, got, tt.want)
			}
		}
	}
}

func TestFromCertificate(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	good := "spiffe://cluster.local/ns/bookstore/sa/bookstore"
	tests := []struct {
		name    string
		uris    []string
		want    string
		wantErr bool
	}{
		{"one SPIFFE ID", []string{good}, good, false},
		{"no URI SAN", nil, "", true},
		{"two URI SANs", []string{good, "spiffe://cluster.local/ns/bookstore/sa/other"}, "", true},
		{"not a workload ID", []string{"spiffe://cluster.local"}, "", true},
		{"other scheme", []string{"https://cluster.local/ns/bookstore/sa/bookstore"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, u := range tt.uris {
				c.URIs = append(c.URIs, mustURL(u))
			}
			got, err := spiffe.FromCertificate(c)
			if tt.wantErr {
				if !errors.Is(err, spiffe.ErrNoSPIFFEID) {
					t.Fatalf("FromCertificate = %v, %v; want an error wrapping ErrNoSPIFFEID", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("FromCertificate = %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/bookstore/sa/bookbuyer",
		"spiffe://td/ns/a/sa/b",
		"spiffe://cluster.local:80/ns/a/sa/b",
		"spiffe://u@td/ns/a/sa/b?q#f",
		"spiffe://td/ns/%41/sa/b",
		"spiffe://td/ns/../sa/b",
		"spiffe:///ns//sa/",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffe.Parse(s)
		if err != nil {
			if !errors.Is(err, spiffe.ErrInvalidID) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalidID", s, err)
			}
			return
		}
		if id.TrustDomain == "" || id.Namespace == "" || id.Account == "" {
			t.Fatalf("Parse(%q) = %+v, with an empty part", s, id)
		}
		if got := id.String(); got != s {
			t.Fatalf("Parse(%q).String() = %q, not the input", s, got)
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("Parse accepted %q, which net/url refuses: %v", s, err)
		}
		if u.Port() != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Host != id.TrustDomain {
			t.Fatalf("Parse accepted %q, which net/url reads as %#v", s, u)
		}
		if back, err := spiffe.Parse(id.URL().String()); err != nil || back != id {
			t.Fatalf("Parse(URL()) = %+v, %v; want %+v", back, err, id)
		}
	})
}

// TestStdlibOnly keeps the package lean: the proxy imports it, so it may import
// nothing outside the standard library.
func TestStdlibOnly(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %q; package spiffe may import the standard library only", name, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no production files to check")
	}
}
