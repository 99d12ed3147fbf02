package smtpclient

import "bufio"

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
// It is dotWriter over the whole body at once: runs of bytes that need no
// change are written straight from the caller's slice, so a large body is
// never copied whole and the common case (CRLF lines, few leading dots) is
// a handful of Writes. Write errors are sticky in a bufio.Writer; the
// caller's Flush reports them.
func writeBody(w *bufio.Writer, b []byte) {
	d := newDotWriter(w)
	d.Write(b)
	d.close()
}
