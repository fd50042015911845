package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Options describe one image to pack.
type Options struct {
	// Ref is the image reference recorded in the archive, such as
	// localhost/trellis/pause:1.0. Required.
	Ref string
	// Out is the archive path to write. Required.
	Out string
	// Entrypoint is the command the image runs; it defaults to the first
	// file's destination.
	Entrypoint []string
	// Files are the files to place in the image. At least one.
	Files []File
}

// File is one file copied into the image.
type File struct {
	// Src is the path on this machine.
	Src string
	// Dest is the absolute path inside the image.
	Dest string
}

// run parses the command line and packs the image.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagepack", flag.ContinueOnError)
	ref := fs.String("ref", "", "image reference to record, such as localhost/trellis/pause:1.0 (required)")
	out := fs.String("out", "", "archive to write, in the docker save format (required)")
	entrypoint := fs.String("entrypoint", "", "command the image runs, split on spaces (default: the first file)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: imagepack -ref REF -out ARCHIVE [-entrypoint CMD] SRC[=DEST]...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	opts := Options{Ref: *ref, Out: *out, Entrypoint: strings.Fields(*entrypoint)}
	for _, a := range fs.Args() {
		src, dest, ok := strings.Cut(a, "=")
		if !ok {
			dest = "/" + filepath.Base(src)
		}
		opts.Files = append(opts.Files, File{Src: src, Dest: dest})
	}
	return Pack(ctx, opts)
}

// Pack writes the image that opts describe.
func Pack(ctx context.Context, opts Options) error {
	if opts.Ref == "" || opts.Out == "" || len(opts.Files) == 0 {
		return errors.New("an image needs -ref, -out and at least one file; run imagepack -h for the usage")
	}
	tag, err := name.NewTag(opts.Ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w; use a name with a tag, such as localhost/trellis/pause:1.0", opts.Ref, err)
	}
	layerTar, err := layer(ctx, opts.Files)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("image %s: layer: %w", opts.Ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return fmt.Errorf("image %s: layer: %w", opts.Ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image %s: config: %w", opts.Ref, err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = opts.Entrypoint
	if len(cf.Config.Entrypoint) == 0 {
		cf.Config.Entrypoint = []string{opts.Files[0].Dest}
	}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("image %s: config: %w", opts.Ref, err)
	}
	tmp := opts.Out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image %s: write %s: %w", opts.Ref, opts.Out, err)
	}
	if err := os.Rename(tmp, opts.Out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image %s: %w", opts.Ref, err)
	}
	return nil
}

// layer returns an uncompressed tar holding files and their parent
// directories, with fixed times and owners so the same inputs give the same
// image digest.
func layer(ctx context.Context, files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	epoch := time.Unix(0, 0).UTC()
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !path.IsAbs(f.Dest) || path.Clean(f.Dest) == "/" {
			return nil, fmt.Errorf("file %s: destination %q must be an absolute file path in the image", f.Src, f.Dest)
		}
		dest := strings.TrimPrefix(path.Clean(f.Dest), "/")
		var parents []string
		for d := path.Dir(dest); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, fmt.Errorf("file %s: %w", f.Src, err)
			}
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file %s: %w; build it before packing", f.Src, err)
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Src, err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: dest, Mode: int64(st.Mode().Perm()), Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Src, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Src, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
