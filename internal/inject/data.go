package inject

import "bytes"

// The body scanner: DATA and BDAT content as it arrives in blocks from the
// connection's read buffer, turned into the message as stored.
//
// It finds line ends with bytes.IndexByte (many bytes per instruction), so
// each byte is looked at about once, and it hands the output on as runs of
// the input block: a run of ordinary CRLF lines costs one emit, and bytes
// are copied only by the sink. What it changes:
//
//   - DATA only: a '.' at the start of a line (after a real CRLF, or at the
//     start of the data) is removed (RFC 5321 4.5.2), and CRLF "." CRLF ends
//     the data. Nothing else does: a bare LF or bare CR is not a line end
//     for this purpose, so "\n.\n" or "\r.\r" is content (SMTP smuggling:
//     a receiver that ended DATA there would see a second message that the
//     client's relay never saw).
//   - A bare LF or bare CR becomes CRLF (RFC 5321 2.3.8).
//   - It notes a NUL octet and a line longer than 998 octets (RFC 5322
//     2.1.1), counted without its CRLF and after dot removal.

// maxLineOctets is RFC 5322's bound on a line, without CRLF.
const maxLineOctets = 998

// scanner states.
const (
	stBOL   = iota // after CRLF or at the start: a '.' here is special (DATA)
	stDot          // after CRLF '.', the dot dropped
	stDotCR        // after CRLF '.' CR
	stMid          // inside a line
	stCR           // inside a line, after a CR not yet written
)

var crlf = []byte("\r\n")

// bodySink receives the scanner's output.
type bodySink interface {
	emit(p []byte)
}

// dataScanner holds the state carried from one block to the next.
type dataScanner struct {
	dots    bool // DATA (dot-stuffing and terminator) rather than BDAT
	st      int
	lineLen int
	nul     bool // a NUL octet was seen
	long    bool // a line over maxLineOctets was seen
	// in counts the client's content octets: what was consumed, less the
	// dots removed and the terminator. It is what max_message_size
	// bounds; line-end repair may make the output longer.
	in      int64
	dropped int64 // dots removed, the terminator's included
}

// add counts n consumed octets, of which the last two are the terminator's
// CR LF when done (its dot is in dropped).
func (d *dataScanner) add(n int, done bool) {
	d.in += int64(n) - d.dropped
	d.dropped = 0
	if done {
		d.in -= 2
	}
}

func newDataScanner(dots bool) dataScanner {
	return dataScanner{dots: dots, st: stBOL}
}

// count adds seg (content bytes, no line end) to the current line.
func (d *dataScanner) count(seg []byte, hasNUL bool) {
	d.lineLen += len(seg)
	if d.lineLen > maxLineOctets {
		d.long = true
	}
	if hasNUL && !d.nul && bytes.IndexByte(seg, 0) >= 0 {
		d.nul = true
	}
}

// scan consumes p (or, for DATA, p up to and including the terminating
// CRLF.CRLF) and returns how many bytes it consumed and whether the
// terminator was found. Output goes to out.
func (d *dataScanner) scan(p []byte, out bodySink) (int, bool) {
	// One pass over the block decides whether NUL needs looking for at
	// all; almost no message has one.
	hasNUL := bytes.IndexByte(p, 0) >= 0
	i, run := 0, 0 // p[run:i] is output not yet emitted
	lfAt := -2     // index of the next LF at or after i; -1: none in p; -2: not looked for
	flush := func(end int) {
		if end > run {
			out.emit(p[run:end])
		}
	}
	for i < len(p) {
		switch d.st {
		case stBOL:
			if d.dots && p[i] == '.' {
				flush(i)
				d.dropped++
				i++
				run = i
				d.st = stDot
				continue
			}
			d.st = stMid
		case stDot:
			if p[i] == '\r' {
				i++
				run = i
				d.st = stDotCR
				continue
			}
			d.st = stMid
		case stDotCR:
			if p[i] == '\n' {
				d.add(i+1, true)
				return i + 1, true
			}
			// ". CR x": the CR was bare.
			out.emit(crlf)
			d.lineLen = 0
			d.st = stMid
		case stCR:
			out.emit(crlf)
			d.lineLen = 0
			if p[i] == '\n' {
				i++
				run = i
				d.st = stBOL
				continue
			}
			d.st = stMid
		case stMid:
			// The next LF is searched for once and remembered, so that a
			// line of many bare CRs does not rescan the block per CR.
			if lfAt != -1 && lfAt < i {
				if lfAt = bytes.IndexByte(p[i:], '\n'); lfAt >= 0 {
					lfAt += i
				}
			}
			lf := -1
			if lfAt >= 0 {
				lf = lfAt - i
			}
			if lf < 0 {
				seg := p[i:]
				cr := bytes.IndexByte(seg, '\r')
				if cr < 0 {
					d.count(seg, hasNUL)
					i = len(p)
					continue
				}
				d.count(seg[:cr], hasNUL)
				flush(i + cr)
				i += cr + 1
				run = i
				if i == len(p) {
					d.st = stCR // its LF may come in the next block
					continue
				}
				out.emit(crlf) // a bare CR
				d.lineLen = 0
				continue
			}
			line := p[i : i+lf]
			cr := bytes.IndexByte(line, '\r')
			switch {
			case cr == len(line)-1 && cr >= 0: // CRLF: the run goes on
				d.count(line[:cr], hasNUL)
				i += lf + 1
				d.lineLen = 0
				d.st = stBOL
			case cr < 0: // a bare LF
				d.count(line, hasNUL)
				flush(i + lf)
				out.emit(crlf)
				i += lf + 1
				run = i
				d.lineLen = 0
			default: // a bare CR before the LF
				d.count(line[:cr], hasNUL)
				flush(i + cr)
				out.emit(crlf)
				i += cr + 1
				run = i
				d.lineLen = 0
			}
		}
	}
	flush(i)
	d.add(i, false)
	return i, false
}

// finish ends a BDAT body: a CR left pending becomes CRLF, and a body not
// ending in a line end gets one (a message is lines; RFC 5322 2.1).
func (d *dataScanner) finish(out bodySink) {
	if d.st == stCR || d.st == stMid && d.lineLen > 0 {
		out.emit(crlf)
	}
	d.st = stBOL
	d.lineLen = 0
}
