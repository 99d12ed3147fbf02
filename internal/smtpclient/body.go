package smtpclient

import (
	"bufio"
	"bytes"
)

// writeBody writes body to w as SMTP DATA content followed by the
// end-of-data line: lines that start with "." get a second one (RFC 5321
// §4.5.2), bare LF and bare CR become CRLF, and a final CRLF is added when
// the body does not end with one.
//
// Bare CR is normalised as well as bare LF because receivers disagree on
// what it means; leaving "\r.\r\n" alone is one of the SMTP smuggling
// vectors (a receiver that takes a bare CR as a line end sees the end of
// data there).
//
// The body is written straight from the caller's slice in runs of bytes
// that need no change, so a large body is never copied whole and the
// common case (CRLF lines, few leading dots) is a handful of Writes.
// Write errors are sticky in a bufio.Writer; the caller's Flush reports them.
func writeBody(w *bufio.Writer, b []byte) {
	run := 0          // start of the bytes not yet written, which need no change
	openLine := false // the body's last line has no terminator yet
	for i := 0; i < len(b); {
		// i is at the start of a line.
		if b[i] == '.' {
			w.Write(b[run:i])
			w.WriteByte('.')
			run = i // the line's own '.' goes out with the run
		}
		rest := b[i:]
		nl := bytes.IndexByte(rest, '\n')
		end := len(rest)
		if nl >= 0 {
			end = nl
		}
		cr := bytes.IndexByte(rest[:end], '\r')
		switch {
		case nl > 0 && cr == nl-1:
			// A proper CRLF line: nothing to change.
			i += nl + 1
		case cr >= 0:
			// A bare CR (one not followed by LF) ends the line.
			w.Write(b[run : i+cr])
			w.WriteString("\r\n")
			i += cr + 1
			run = i
		case nl >= 0:
			// A bare LF.
			w.Write(b[run : i+nl])
			w.WriteString("\r\n")
			i += nl + 1
			run = i
		default:
			// The last line, without a terminator.
			i = len(b)
			openLine = true
		}
	}
	w.Write(b[run:])
	if openLine {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
}
