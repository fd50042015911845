package detect

import (
	"io"
	"net"
)

// conn replays the bytes Detect peeked, then reads from the connection itself.
// It holds at most MaxPeek bytes: there is no second buffer in front of the
// socket, and once the peeked bytes are consumed reads and copies go straight
// to it (io.Copy keeps using splice between TCP sockets).
type conn struct {
	net.Conn
	buf [MaxPeek]byte
	off int  // next byte of buf to replay
	n   int  // bytes peeked
	eof bool // the client closed its side while Detect read
}

// closeWriteConn is conn for connections that can half-close.
type closeWriteConn struct {
	conn
	cw closeWriter
}

type closeWriter interface {
	CloseWrite() error
}

// wrap makes the replaying connection around c, keeping CloseWrite if c has it.
func wrap(c net.Conn) (*conn, net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		w := &closeWriteConn{conn: conn{Conn: c}, cw: cw}
		return &w.conn, w
	}
	r := &conn{Conn: c}
	return r, r
}

// Read returns the peeked bytes not yet read, then reads from the connection.
func (c *conn) Read(p []byte) (int, error) {
	if c.off < c.n {
		n := copy(p, c.buf[c.off:c.n])
		c.off += n
		return n, nil
	}
	if c.eof {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

// WriteTo writes the peeked bytes not yet read to w, then copies the rest of
// the connection to w, so io.Copy from this connection can still splice.
func (c *conn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if c.off < c.n {
		n, err := w.Write(c.buf[c.off:c.n])
		c.off += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	if c.eof {
		return total, nil
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// ReadFrom copies r to the connection with the connection's own ReadFrom when
// it has one, so io.Copy to this connection can still splice.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// NetConn returns the wrapped connection. Reading from it directly skips the
// peeked bytes that have not been read yet.
func (c *conn) NetConn() net.Conn { return c.Conn }

// CloseWrite shuts down the writing side of the wrapped connection.
func (c *closeWriteConn) CloseWrite() error { return c.cw.CloseWrite() }
