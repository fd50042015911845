package translate

import (
	"path/filepath"
	"testing"
)

// FuzzDecodeTranslate feeds arbitrary input through Decode and Translate, seeded
// with the bookstore demo's objects (seed 001), Gateway API routes, MeshConfigs and the invalid
// cases. Neither may panic, and what Decode accepts must be canonical: decoding
// a resource's Raw again gives the same resource.
func FuzzDecodeTranslate(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{"testdata/*.yaml", "testdata/*/*.yaml", "testdata/*/*.json"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, m...)
	}
	if len(seeds) == 0 {
		f.Fatal("no seed files")
	}
	for _, s := range seeds {
		f.Add(readTestdata(f, s[len("testdata/"):]))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Decode(data, "fuzz.yaml")
		if err != nil {
			if rs != nil {
				t.Fatalf("Decode returned resources with error %v", err)
			}
			return
		}
		refs := map[string]bool{}
		for _, r := range rs {
			if !accepted(r.APIVersion, r.Kind) || !isDNSSubdomain(r.Name) || !isDNSLabel(r.Namespace) {
				t.Fatalf("Decode accepted %+v", r)
			}
			again, err := Decode(r.Raw, "raw")
			if err != nil || len(again) != 1 || string(again[0].Raw) != string(r.Raw) || again[0].Ref() != r.Ref() {
				t.Fatalf("Raw %s of %s does not decode to itself: %v, %+v", r.Raw, r.Ref(), err, again)
			}
			refs[r.Ref()] = true
		}
		objs, errs, warns := Translate(rs)
		for _, p := range append(errs, warns...) {
			if !refs[p.Object] || p.Message == "" {
				t.Fatalf("problem %+v is not about an input resource or says nothing", p)
			}
		}
		if n := len(objs.Splits) + len(objs.Targets) + len(objs.RouteGroups) + len(objs.TCPRoutes) + len(objs.MeshConfigs); n > len(rs) {
			t.Fatalf("%d objects from %d resources", n, len(rs))
		}
	})
}
