package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestPack(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "cfg.json")
	if err := os.WriteFile(cfg, []byte(`{"a":1}`), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name           string
		opts           Options
		wantEntrypoint []string
		wantFiles      map[string]string // path in layer -> content ("" for a directory)
	}{
		{
			name:           "one binary, default entrypoint",
			opts:           Options{Ref: "localhost/trellis/pause:1.0", Files: []File{{Src: bin, Dest: "/pause"}}},
			wantEntrypoint: []string{"/pause"},
			wantFiles:      map[string]string{"pause": "#!binary"},
		},
		{
			name: "nested destinations and an explicit entrypoint",
			opts: Options{
				Ref:        "localhost/trellis/app:test",
				Entrypoint: []string{"/usr/bin/app", "-config", "/etc/app/cfg.json"},
				Files:      []File{{Src: bin, Dest: "/usr/bin/app"}, {Src: cfg, Dest: "/etc/app/cfg.json"}},
			},
			wantEntrypoint: []string{"/usr/bin/app", "-config", "/etc/app/cfg.json"},
			wantFiles: map[string]string{
				"usr/": "", "usr/bin/": "", "usr/bin/app": "#!binary",
				"etc/": "", "etc/app/": "", "etc/app/cfg.json": `{"a":1}`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Out = filepath.Join(t.TempDir(), "image.tar")
			if err := Pack(context.Background(), tt.opts); err != nil {
				t.Fatalf("Pack: %v", err)
			}

			// The archive names the image the way `ctr images import` reads it.
			if got := repoTags(t, tt.opts.Out); !cmp.Equal(got, []string{tt.opts.Ref}) {
				t.Errorf("manifest.json RepoTags = %v, want [%s]", got, tt.opts.Ref)
			}

			tag, err := name.NewTag(tt.opts.Ref)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(tt.opts.Out, &tag)
			if err != nil {
				t.Fatalf("reading the archive back: %v", err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != "linux" {
				t.Errorf("config OS = %q, want linux", cf.OS)
			}
			if diff := cmp.Diff(tt.wantEntrypoint, cf.Config.Entrypoint); diff != "" {
				t.Errorf("entrypoint (-want +got):\n%s", diff)
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if len(layers) != 1 {
				t.Fatalf("got %d layers, want 1", len(layers))
			}
			if diff := cmp.Diff(tt.wantFiles, layerFiles(t, layers[0].Uncompressed)); diff != "" {
				t.Errorf("layer files (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPackIsReproducible(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for i := range 2 {
		out := filepath.Join(dir, "image.tar")
		if err := Pack(context.Background(), Options{Ref: "localhost/x:1", Out: out, Files: []File{{Src: bin, Dest: "/pause"}}}); err != nil {
			t.Fatalf("Pack #%d: %v", i, err)
		}
		img, err := tarball.ImageFromPath(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d.String())
	}
	if digests[0] != digests[1] {
		t.Errorf("image digests differ for the same input: %s and %s", digests[0], digests[1])
	}
}

func TestPackRejects(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"no ref", Options{Out: out, Files: []File{{Src: bin, Dest: "/pause"}}}, "needs -ref"},
		{"no files", Options{Ref: "localhost/x:1", Out: out}, "at least one file"},
		{"bad ref", Options{Ref: "UPPER/x:1", Out: out, Files: []File{{Src: bin, Dest: "/pause"}}}, `image reference "UPPER/x:1"`},
		{"relative dest", Options{Ref: "localhost/x:1", Out: out, Files: []File{{Src: bin, Dest: "pause"}}}, "must be an absolute file path"},
		{"missing file", Options{Ref: "localhost/x:1", Out: out, Files: []File{{Src: filepath.Join(dir, "nope"), Dest: "/nope"}}}, "build it before packing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Pack(context.Background(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Pack error = %v, want one containing %q", err, tt.wantErr)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed Pack left %s behind (stat: %v)", out, err)
			}
		})
	}
}

// repoTags returns the RepoTags of the archive's only manifest.json entry.
func repoTags(t *testing.T, archive string) []string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			t.Fatal("archive has no manifest.json")
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			t.Fatalf("manifest.json: %v", err)
		}
		if len(m) != 1 {
			t.Fatalf("manifest.json has %d entries, want 1", len(m))
		}
		return m[0].RepoTags
	}
}

// layerFiles maps each entry of a layer to its content ("" for directories).
func layerFiles(t *testing.T, open func() (io.ReadCloser, error)) map[string]string {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = string(b)
	}
}
