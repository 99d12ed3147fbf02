package inject

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// byteConn is a net.Conn reading a fixed input step bytes at a time: the
// operating system's socket, replaced so the fuzz target runs without
// goroutines. Writes are dropped.
type byteConn struct {
	in   []byte
	step int
}

func (b *byteConn) Read(p []byte) (int, error) {
	if len(b.in) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(b.in), b.step)
	copy(p, b.in[:n])
	b.in = b.in[n:]
	return n, nil
}
func (b *byteConn) Write(p []byte) (int, error)      { return len(p), nil }
func (b *byteConn) Close() error                     { return nil }
func (b *byteConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (b *byteConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (b *byteConn) SetDeadline(time.Time) error      { return nil }
func (b *byteConn) SetReadDeadline(time.Time) error  { return nil }
func (b *byteConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzCommandLine checks the command line reader against a byte-at-a-time
// model (lines end at LF, one CR before it is dropped, a line longer than
// the bound is reported as such and skipped whole), and that the MAIL and
// RCPT argument parsers never panic and refuse only with 5xx.
func FuzzCommandLine(f *testing.F) {
	f.Add([]byte("EHLO a\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n"), uint8(3), uint16(20))
	f.Add([]byte("RCPT TO:<\"x y\"@b.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@c\r\nQUIT"), uint8(1), uint16(510))
	f.Add([]byte("x\ry\r\r\n\n\nlong long line\r\nok\r\n"), uint8(5), uint16(4))
	f.Fuzz(func(t *testing.T, in []byte, step uint8, max uint16) {
		if step == 0 {
			step = 1
		}
		lim := int(max)%(readBlock/2) + 1
		// The model.
		type line struct {
			s    string
			long bool
		}
		var want []line
		rest := in
		for {
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				break
			}
			l := bytes.TrimSuffix(rest[:i], []byte{'\r'})
			if len(l) > lim {
				want = append(want, line{long: true})
			} else {
				want = append(want, line{s: string(l)})
			}
			rest = rest[i+1:]
		}
		// The reader.
		s := &Server{}
		bc := &byteConn{in: in, step: int(step)}
		c := &conn{srv: s, nc: bc, rw: bc, buf: new([readBlock]byte)}
		var got []line
		for range len(in) + 1 {
			l, long, err := c.readLine(lim, 0)
			if err != nil {
				break
			}
			got = append(got, line{s: string(l), long: long})
		}
		if len(got) != len(want) {
			t.Fatalf("%d lines, want %d: %+v vs %+v", len(got), len(want), got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("line %d: %+v, want %+v", i, got[i], want[i])
			}
		}
		for _, l := range got {
			if a, p, err := parsePath(l.s); err == nil {
				_ = a
				if _, e := parseMailParams(p); e != nil && e.Code/100 != 5 {
					t.Fatalf("MAIL params %q: %d", p, e.Code)
				}
				if _, e := parseRcptParams(p, true); e != nil && e.Code/100 != 5 {
					t.Fatalf("RCPT params %q: %d", p, e.Code)
				}
			}
		}
	})
}
