package h1

import (
	"bufio"
	"errors"
	"io"
)

// Writer gathers what the relay sends to one peer and writes it in as few
// calls as it can: bytes are appended to Buf and written out only before a
// read would wait for more (Flush), or when Buf grows past its flush size. A
// small message, head and body, so goes out in one write and one TLS record.
type Writer struct {
	W   io.Writer
	Buf []byte
	// N counts the bytes written out to W.
	N   int64
	Err error
}

// flushAt is how much a Writer gathers before writing it out regardless.
const flushAt = 32 << 10

// Write appends b (for io.Writer; it never fails until a flush has).
func (w *Writer) Write(b []byte) (int, error) {
	if w.Err != nil {
		return 0, w.Err
	}
	w.Buf = append(w.Buf, b...)
	if len(w.Buf) >= flushAt {
		w.Flush()
	}
	return len(b), w.Err
}

// WriteString appends s.
func (w *Writer) WriteString(s string) {
	w.Buf = append(w.Buf, s...)
}

// Flush writes out what is gathered.
func (w *Writer) Flush() error {
	if w.Err == nil && len(w.Buf) > 0 {
		var n int
		n, w.Err = w.W.Write(w.Buf)
		w.N += int64(n)
	}
	w.Buf = w.Buf[:0]
	return w.Err
}

// errBodyEnd reports a body that ended before its framing said.
var errBodyEnd = errors.New("h1: body ended early")

// ReadError is a failure to read from the sending side of a body, as opposed
// to a failure to write to the receiving side (w.Err).
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "h1: reading the body: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// CopyLength copies n body bytes from br to w, flushing w before each read
// that may wait. It returns the bytes copied.
func CopyLength(w *Writer, br *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		if br.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return done, err
			}
			if _, err := br.Peek(1); err != nil {
				return done, &ReadError{eofIsEarly(err)}
			}
		}
		b, _ := br.Peek(int(min(int64(br.Buffered()), n-done, flushAt)))
		w.Write(b)
		br.Discard(len(b))
		done += int64(len(b))
		if w.Err != nil {
			return done, w.Err
		}
	}
	return done, nil
}

// CopyUntilEOF copies a body that ends with the connection.
func CopyUntilEOF(w *Writer, br *bufio.Reader) (int64, error) {
	var done int64
	for {
		if br.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return done, err
			}
			if _, err := br.Peek(1); err != nil {
				if err == io.EOF {
					return done, nil
				}
				return done, &ReadError{err}
			}
		}
		b, _ := br.Peek(min(br.Buffered(), flushAt))
		w.Write(b)
		br.Discard(len(b))
		done += int64(len(b))
		if w.Err != nil {
			return done, w.Err
		}
	}
}

func eofIsEarly(err error) error {
	if err == io.EOF {
		return errBodyEnd
	}
	return err
}

// maxChunkLine bounds a chunk-size line (with extensions) and a trailer field.
const maxChunkLine = 4 << 10

// CopyChunked copies a chunked body from br to w as it is, chunk extensions
// and trailer fields included, checking its framing as it goes; it returns
// the data bytes (not counting the framing) and stops after the last chunk's
// trailer section. Each chunk is passed on as soon as it is read.
func CopyChunked(w *Writer, br *bufio.Reader) (int64, error) {
	var data int64
	for {
		line, err := readLine(w, br)
		if err != nil {
			return data, err
		}
		size, ok := chunkSize(line)
		if !ok {
			return data, &ReadError{ErrMalformed}
		}
		w.Write(line)
		if size == 0 {
			break
		}
		n, err := CopyLength(w, br, size)
		data += n
		if err != nil {
			return data, err
		}
		crlf, err := readLine(w, br)
		if err != nil {
			return data, err
		}
		if len(crlf) != 2 {
			return data, &ReadError{ErrMalformed}
		}
		w.Write(crlf)
	}
	// The trailer section: fields, then the empty line.
	for fields := 0; ; fields++ {
		line, err := readLine(w, br)
		if err != nil {
			return data, err
		}
		w.Write(line)
		if len(line) == 2 {
			return data, nil
		}
		if fields == maxFields || !validTrailer(line[:len(line)-2]) {
			return data, &ReadError{ErrMalformed}
		}
	}
}

// readLine returns the next CRLF-terminated line of br, CRLF included, valid
// until the next read; w is flushed first when the line is not buffered whole.
func readLine(w *Writer, br *bufio.Reader) ([]byte, error) {
	b, _ := br.Peek(br.Buffered())
	i := indexLF(b)
	if i < 0 {
		if err := w.Flush(); err != nil {
			return nil, err
		}
		var err error
		for n := len(b) + 1; i < 0; n = len(b) + 1 {
			if n > maxChunkLine {
				return nil, &ReadError{ErrMalformed}
			}
			b, err = br.Peek(n)
			if err != nil {
				return nil, &ReadError{eofIsEarly(err)}
			}
			b, _ = br.Peek(br.Buffered())
			i = indexLF(b)
		}
	}
	if i > maxChunkLine || i == 0 || b[i-1] != '\r' {
		return nil, &ReadError{ErrMalformed}
	}
	line := b[:i+1]
	br.Discard(len(line))
	return line, nil
}

func indexLF(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// chunkSize parses a chunk-size line (CRLF included): hex digits, then
// optional extensions after ';'.
func chunkSize(line []byte) (int64, bool) {
	line = line[:len(line)-2]
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false // more than 2^60: no body is that long
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

// validTrailer checks one trailer field line (CRLF removed).
func validTrailer(line []byte) bool {
	colon := -1
	for i, c := range line {
		if c == ':' {
			colon = i
			break
		}
	}
	if colon <= 0 || !isToken(line[:colon]) {
		return false
	}
	for _, c := range line[colon+1:] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
