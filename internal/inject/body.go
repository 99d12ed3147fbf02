package inject

import (
	"bytes"
	"errors"
	"io"

	"github.com/emersion/go-smtp"
)

// errBodyTooBig means the body passed MaxMessageSize.
var errBodyTooBig = errors.New("message body exceeds the maximum size")

// readBody copies the body from r into buf with every line ending made
// CRLF, and with a final CRLF if the body has none (BDAT allows that).
// go-smtp's DATA reader has already removed dot-stuffing and the final
// ".CRLF"; it keeps line endings as sent, bare LF included. max bounds the
// bytes read from r (go-smtp enforces the same bound for DATA; this one
// holds for any reader). chunk is the scratch space reads go to; the caller
// pools it, since a fresh one per message is garbage the collector pays for.
func readBody(buf *bytes.Buffer, r io.Reader, max int64, chunk []byte) error {
	var w crlfWriter
	w.buf = buf
	var total int64
	for {
		n, err := r.Read(chunk)
		total += int64(n)
		if total > max {
			return errBodyTooBig
		}
		w.write(chunk[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, smtp.ErrDataTooLarge) {
				return errBodyTooBig
			}
			return err
		}
	}
	w.finish()
	return nil
}

// crlfWriter appends to buf turning bare LF and bare CR into CRLF. It keeps
// one byte of state across writes: whether the last byte was a CR.
type crlfWriter struct {
	buf    *bytes.Buffer
	prevCR bool
}

func (w *crlfWriter) write(p []byte) {
	for len(p) > 0 {
		if w.prevCR {
			w.prevCR = false
			w.buf.WriteByte('\n')
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		i := irregularEOL(p)
		if i < 0 {
			w.buf.Write(p)
			return
		}
		w.buf.Write(p[:i])
		if p[i] == '\r' {
			w.buf.WriteByte('\r')
			w.prevCR = true
		} else {
			w.buf.WriteString("\r\n")
		}
		p = p[i+1:]
	}
}

// irregularEOL returns the index of the first CR or LF in p that is not part
// of a CRLF pair lying wholly inside p (a CR as p's last byte counts, since
// its LF may be in the next write), or -1 if there is none. Almost every
// message is all CRLF, so this is the hot path of the body copy: it finds
// line ends with bytes.IndexByte, which scans many bytes at a time, instead
// of testing each byte against a set.
func irregularEOL(p []byte) int {
	n := 0
	for {
		cr := bytes.IndexByte(p[n:], '\r')
		if cr < 0 {
			if lf := bytes.IndexByte(p[n:], '\n'); lf >= 0 {
				return n + lf
			}
			return -1
		}
		if lf := bytes.IndexByte(p[n:n+cr], '\n'); lf >= 0 {
			return n + lf // a bare LF before the next CR
		}
		n += cr
		if n+1 == len(p) || p[n+1] != '\n' {
			return n // a bare CR, or one whose LF is not in p
		}
		n += 2
	}
}

// finish completes a trailing CR and ends a non-empty body with CRLF.
func (w *crlfWriter) finish() {
	if w.prevCR {
		w.prevCR = false
		w.buf.WriteByte('\n')
	}
	if b := w.buf.Bytes(); len(b) > 0 && !bytes.HasSuffix(b, []byte("\r\n")) {
		w.buf.WriteString("\r\n")
	}
}
