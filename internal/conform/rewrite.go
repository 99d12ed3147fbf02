package conform

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
)

// action is what Rewrite does to a leaf body.
type action uint8

const (
	actKeep    action = iota // copy as it is
	actQP                    // encode as quoted-printable (a text/* part)
	actBase64                // encode as base64 (any other part)
	actWrapQP                // already quoted-printable: add soft line breaks, escape 8-bit octets
	actWrapB64               // already base64: re-cut its lines at 76
)

// decide is the pure decision for one leaf: what its body needs under o,
// given the plan bits Scan set for it.
//
// A part that is already quoted-printable or base64 but has lines over 998
// octets (or raw 8-bit octets) is malformed; it is not decoded and encoded
// again (its decoding is not well defined) but re-wrapped: a soft line break
// or a base64 line break changes no decoder's output, so the content stays
// what it was.
func decide(e *entity, f uint8, o Options) (action, error) {
	if e.kind != kindLeaf {
		return actKeep, nil
	}
	long := f&fLong != 0
	if !long && !(o.To7Bit && f&(f8bit|fNUL) != 0) {
		return actKeep, nil
	}
	fail := ErrConversion
	if long {
		fail = ErrCannotConform
	}
	switch {
	case e.cte == "quoted-printable":
		return actWrapQP, nil
	case e.cte == "base64":
		return actWrapB64, nil
	case !e.identity():
		return actKeep, fmt.Errorf("conform: part %d: transfer encoding %q: %w", e.ord, e.cte, fail)
	case strings.HasPrefix(e.mtype, "multipart/") || (strings.HasPrefix(e.mtype, "message/") && e.mtype != "message/global"):
		// RFC 2045 §6.4: composite types take identity encodings only.
		return actKeep, fmt.Errorf("conform: part %d: %s cannot be encoded: %w", e.ord, e.mtype, fail)
	case e.text:
		return actQP, nil
	default:
		return actBase64, nil
	}
}

type rewriter struct {
	bw   *bufio.Writer
	last byte  // the last octet written, to end the output with a line end
	n    int64 // octets written
	rep  *Report
	opts Options
	res  Result

	act  action
	qp   qpEnc
	b64  io.WriteCloser
	wrap lineWrap
	col  int // actWrapQP: column on the output line
	esc  int // actWrapQP: octets left of an =XX escape
	esc3 [3]byte
	hold []byte // actWrapQP: spaces and tabs not yet known to be inside a line
	fbuf []byte
	hbuf []byte
	pts  []int
}

func newRewriter(dst io.Writer, rep *Report, o Options) *rewriter {
	rw := &rewriter{bw: bufio.NewWriterSize(dst, 64<<10), rep: rep, opts: o}
	rw.wrap.w = rw
	rw.qp.rw = rw
	return rw
}

// Write is the rewriter's output; bufio keeps the first error and finish
// reports it.
func (rw *rewriter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		rw.last = p[len(p)-1]
		rw.n += int64(len(p))
	}
	return rw.bw.Write(p)
}

func (rw *rewriter) finish() error {
	if rw.n > 0 && rw.last != '\n' { // SMTP ends the data with a line end anyway
		rw.Write(crlf)
	}
	if err := rw.bw.Flush(); err != nil {
		return fmt.Errorf("conform: write: %w", err)
	}
	return nil
}

func (rw *rewriter) header(e *entity, block, blank []byte) error {
	if e.ord >= len(rw.rep.plan) {
		return ErrChanged
	}
	f := rw.rep.plan[e.ord]
	act, err := decide(e, f, rw.opts)
	if err != nil {
		return err
	}
	rw.act = act
	cte := ""
	switch {
	case act == actQP:
		cte = "quoted-printable"
		rw.res.Reencoded++
		rw.qp.col, rw.qp.ws = 0, 0
	case act == actBase64:
		cte = "base64"
		rw.res.Reencoded++
		rw.wrap.col = 0
		rw.b64 = base64.NewEncoder(base64.StdEncoding, &rw.wrap)
	case act == actWrapQP:
		rw.res.Rewrapped++
	case act == actWrapB64:
		rw.res.Rewrapped++
		rw.wrap.col = 0
	case rw.opts.To7Bit && e.kind != kindLeaf && (e.cte == "8bit" || e.cte == "binary"):
		// Its children are 7-bit once converted (RFC 2045 §6.4).
		cte = "7bit"
		rw.res.Relabeled++
	}
	if cte == "" && f&(fHdrLong|fHdr8bit) == 0 {
		rw.Write(block)
		rw.Write(blank)
		return nil
	}
	if rw.opts.asciiHeaders() && f&fHdr8bit != 0 {
		if block, err = DowngradeHeader(block); err != nil {
			return fmt.Errorf("conform: part %d: %w", e.ord, err)
		}
		rw.res.Headers++
	}
	out, placed, mimeVersion := rw.hbuf[:0], false, false
	eachField(block, func(name, raw, _ []byte) {
		if err != nil {
			return
		}
		if asciiEqualFold(name, "mime-version") {
			mimeVersion = true
		}
		if cte != "" && asciiEqualFold(name, "content-transfer-encoding") {
			if !placed {
				out = append(out, "Content-Transfer-Encoding: "+cte+"\r\n"...)
				placed = true
			}
			return
		}
		var n int
		out, n, err = writeField(out, raw, name, rw.pts)
		rw.res.Folded += n
	})
	if err != nil {
		return err
	}
	if cte != "" && !placed {
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, crlf...)
		}
		if e.ord == 0 && !mimeVersion {
			out = append(out, "MIME-Version: 1.0\r\n"...)
		}
		out = append(out, "Content-Transfer-Encoding: "+cte+"\r\n"...)
	}
	if blank == nil && act != actKeep {
		blank = crlf // an encoded body needs the blank line before it
	}
	rw.hbuf = out[:0]
	rw.Write(out)
	rw.Write(blank)
	return nil
}

func (rw *rewriter) bodyText(e *entity, c []byte, start bool) error {
	switch rw.act {
	case actQP:
		rw.qp.write(c)
	case actBase64:
		rw.b64.Write(c)
	case actWrapQP:
		rw.wrapQP(c)
	case actWrapB64:
		rw.fbuf = rw.fbuf[:0]
		for _, b := range c {
			if isB64(b) {
				rw.fbuf = append(rw.fbuf, b)
			}
		}
		rw.wrap.Write(rw.fbuf)
	default:
		rw.Write(c)
	}
	return nil
}

func (rw *rewriter) bodyEOL(e *entity, eol []byte) error {
	switch rw.act {
	case actQP:
		// A CRLF is a hard line break; a bare LF is an octet of content.
		if len(eol) == 2 {
			rw.qp.hardBreak()
		} else {
			rw.qp.write(eol)
		}
	case actBase64:
		rw.b64.Write(eol)
	case actWrapQP:
		rw.qpLineEnd(eol)
	case actWrapB64:
		// line breaks are not base64 data; lineWrap makes its own
	default:
		rw.Write(eol)
	}
	return nil
}

// endLeaf closes the encoding. With delim, eol is the CRLF of the delimiter
// that follows, not content: the encoded text ends and a CRLF is written for
// the delimiter. Without, eol is the body's last line end and is content.
func (rw *rewriter) endLeaf(e *entity, eol []byte, delim bool) error {
	switch rw.act {
	case actQP:
		if !delim && eol != nil {
			rw.bodyEOL(e, eol)
		}
		rw.qp.flushWS(true)
		switch {
		case delim:
			rw.Write(crlf)
		case rw.last != '\n':
			rw.Write(softBreak) // a soft break: the content had no final line end
		}
	case actBase64:
		if !delim && eol != nil {
			rw.b64.Write(eol)
		}
		rw.b64.Close()
		rw.Write(crlf)
	case actWrapQP:
		rw.qpLineEnd(eol)
	case actWrapB64:
		rw.Write(crlf)
	default:
		rw.Write(eol)
	}
	rw.act = actKeep
	return nil
}

func (rw *rewriter) raw(p piece) error {
	rw.Write(p.content)
	rw.Write(p.eol)
	return nil
}

const hexUpper = "0123456789ABCDEF"

var softBreak = []byte("=\r\n")

// escape writes b as a quoted-printable =XX.
func (rw *rewriter) escape(b byte) {
	rw.esc3 = [3]byte{'=', hexUpper[b>>4], hexUpper[b&15]}
	rw.Write(rw.esc3[:])
}

// check refuses, before any output, what Scan found that no rewrite fixes.
func (r *Report) check(o Options) error {
	switch {
	case r.Unfoldable:
		return fmt.Errorf("conform: header line over %d octets: %w", MaxLine, ErrUnfoldable)
	case r.rawLong:
		// A preamble or epilogue has no encoding to put a long line in.
		return fmt.Errorf("conform: preamble, epilogue or boundary line over %d octets: %w", MaxLine, ErrCannotConform)
	case o.To7Bit && r.raw8:
		return fmt.Errorf("conform: 8-bit or NUL octet in a preamble, epilogue or boundary line: %w", ErrConversion)
	case o.To7Bit && r.hdrNUL:
		return fmt.Errorf("conform: NUL octet in a header: %w", ErrConversion)
	}
	return nil
}

// wsHoldMax bounds the whitespace wrapQP holds back. A longer run is
// written as it comes; only if it then ends a line can a decoder's output
// gain whitespace that the original's decoding dropped.
const wsHoldMax = 1024

// wrapQP copies quoted-printable text, inserting a soft line break before
// the output line would pass 76 columns (never inside an =XX escape), and
// escaping NUL and 8-bit octets when converting to 7 bits. A run of spaces
// and tabs is held until a non-blank octet follows it: at a line end it is
// transport padding that decoders delete (RFC 2045 §6.7 (3)) and is dropped,
// where a soft break inside it would have made it content. A decoder reads
// the same octets from the result as from the input.
func (rw *rewriter) wrapQP(c []byte) {
	for _, b := range c {
		if rw.esc == 0 && (b == ' ' || b == '\t') && len(rw.hold) < wsHoldMax {
			rw.hold = append(rw.hold, b)
			continue
		}
		for _, w := range rw.hold {
			rw.qpOut(w)
		}
		rw.hold = rw.hold[:0]
		rw.qpOut(b)
	}
}

// qpLineEnd ends a re-wrapped line: held whitespace is dropped and eol
// written; at the end of the body without a line end, a soft break ends the
// output line without adding content.
func (rw *rewriter) qpLineEnd(eol []byte) {
	rw.hold = rw.hold[:0]
	switch {
	case eol != nil:
		rw.Write(eol)
	case rw.last == '\n':
	case rw.last == '=': // a dangling "=" already is a soft break
		rw.Write(crlf)
	default:
		rw.Write(softBreak)
	}
	rw.col, rw.esc = 0, 0
}

func (rw *rewriter) qpOut(b byte) {
	enc := rw.opts.To7Bit && (b >= 0x80 || b == 0)
	if rw.esc > 0 {
		rw.esc--
	} else {
		unit := 1
		if b == '=' || enc {
			unit = 3
		}
		if rw.col+unit > 75 {
			rw.Write(softBreak)
			rw.col = 0
			// A line we start must not read as a boundary delimiter.
			enc = enc || b == '-'
		}
		if b == '=' {
			rw.esc = 2
		}
	}
	if enc {
		rw.escape(b)
		rw.col += 3
	} else {
		rw.bw.WriteByte(b)
		rw.last = b
		rw.n++
		rw.col++
	}
}

func isB64(b byte) bool {
	return b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '='
}

// lineWrap cuts base64 text into lines of 76 characters (RFC 2045 §6.8),
// breaking before a character rather than after, so the text never ends in
// an empty line.
type lineWrap struct {
	w   io.Writer
	col int
}

func (l *lineWrap) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if l.col == 76 {
			l.w.Write(crlf)
			l.col = 0
		}
		k := min(76-l.col, len(p))
		l.w.Write(p[:k])
		l.col += k
		p = p[k:]
	}
	return n, nil
}

// qpEnc encodes a text part as quoted-printable (RFC 2045 §6.7). It is ours
// rather than mime/quotedprintable's Writer because an encoder inside a
// multipart must not start a line with "--" (after a soft break the rest of
// a long line could read as a boundary delimiter), and because a bare CR or
// LF must stay an octet of content (=0D, =0A) while CRLF is a hard break.
// Lines are at most 76 octets; a space or tab is held until the next octet
// shows whether it ends a line, where it is encoded.
type qpEnc struct {
	rw  *rewriter
	col int
	ws  byte // a held space or tab, 0 for none
}

func (q *qpEnc) write(c []byte) {
	for _, b := range c {
		q.flushWS(false)
		switch {
		case b == ' ' || b == '\t':
			q.ws = b
		case b >= '!' && b <= '~' && b != '=':
			q.literal(b)
		default:
			q.escape(b)
		}
	}
}

func (q *qpEnc) room(n int) {
	if q.col+n > 75 {
		q.rw.Write(softBreak)
		q.col = 0
	}
}

func (q *qpEnc) literal(b byte) {
	q.room(1)
	if q.col == 0 && b == '-' {
		q.escape(b)
		return
	}
	q.rw.bw.WriteByte(b)
	q.rw.last = b
	q.rw.n++
	q.col++
}

func (q *qpEnc) escape(b byte) {
	q.room(3)
	q.rw.escape(b)
	q.col += 3
}

// flushWS writes a held space or tab: encoded when a line end follows,
// since decoders drop trailing whitespace.
func (q *qpEnc) flushWS(atEOL bool) {
	if q.ws == 0 {
		return
	}
	b := q.ws
	q.ws = 0
	if atEOL {
		q.escape(b)
	} else {
		q.literal(b)
	}
}

func (q *qpEnc) hardBreak() {
	q.flushWS(true)
	q.rw.Write(crlf)
	q.col = 0
}
