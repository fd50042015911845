package detect

import (
	"bytes"
	"regexp"
	"testing"
)

// method is the HTTP/1 rule written independently of Sniff.
var method = regexp.MustCompile(`^[A-Z][A-Z-]{0,19} `)

// FuzzSniff checks that Sniff never panics, decides by MaxPeek bytes, keeps a
// decision once made whatever follows, and agrees with the rules written out
// independently.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{
		"", "GET / HTTP/1.1\r\n", "PRI ", preface, preface + "\x00\x00", "PRI * HTTP/1.1\r\n",
		"\x16\x03\x01\x00\x05\x01", "\x16\x03\x05", "\x00", "BASELINE-CONTROL /", "SSH-2.0-x",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, needMore := Sniff(b)
		if needMore && p != TCP {
			t.Fatalf("Sniff(%q) = %v with needMore; want tcp until decided", b, p)
		}
		if needMore && len(b) >= MaxPeek {
			t.Fatalf("Sniff(%q) needs more after %d bytes; MaxPeek is %d", b, len(b), MaxPeek)
		}
		for i := range len(b) {
			if pi, more := Sniff(b[:i]); !more && pi != p || !more && needMore {
				t.Fatalf("Sniff(%q) decided %v, but the longer %q gives %v, needMore %v", b[:i], pi, b, p, needMore)
			}
		}
		if needMore {
			return
		}
		isH2 := bytes.HasPrefix(b, []byte(preface))
		isTLS := len(b) >= 6 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 && b[5] == 0x01
		isH1 := !isH2 && method.Match(b)
		want := TCP
		switch {
		case isH2:
			want = HTTP2
		case isTLS:
			want = TLS
		case isH1:
			want = HTTP1
		}
		if p != want {
			t.Fatalf("Sniff(%q) = %v, want %v", b, p, want)
		}
	})
}
