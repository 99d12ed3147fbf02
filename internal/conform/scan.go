package conform

import (
	"bytes"
	"encoding/binary"
	"io"
)

// Report is what Scan found. The exported fields describe the whole message;
// the plan (one byte per MIME entity, in order of appearance) is what Rewrite
// follows.
type Report struct {
	Entities       int  // MIME entities: the message, its parts, encapsulated messages
	LongLines      bool // a body line (or preamble, epilogue, boundary line) over 998 octets
	LongHeaders    bool // a header line over 998 octets
	Unfoldable     bool // a header line over 998 octets with no whitespace to fold it at
	EightBit       bool // an octet ≥ 0x80 outside the header blocks
	HeaderEightBit bool // an octet ≥ 0x80 in a header block (the message's or a part's)
	NUL            bool // a NUL octet anywhere
	BareCR         bool // a CR not followed by LF
	BareLF         bool // a line ended by LF alone
	Unterminated   bool // the last line has no line end

	plan    []uint8
	rawLong bool // a long preamble, epilogue or boundary line: no encoding can fix it
	raw8    bool // an 8-bit octet or a NUL in one
	hdrNUL  bool // a NUL in a header block: no encoding can fix it
	curLen  int
	scratch []int
}

// Per-entity plan bits.
const (
	fLong    uint8 = 1 << iota // a body line over 998 octets
	f8bit                      // an octet ≥ 0x80 in the body
	fNUL                       // a NUL in the body
	fHdrLong                   // a header line over 998 octets
	fHdr8bit                   // an octet ≥ 0x80 in the header block
)

// NeedsRewrite says whether Rewrite would change anything under o. When it
// says false, the message may be stored or sent as it is.
func (r *Report) NeedsRewrite(o Options) bool {
	return r.LongLines || r.LongHeaders ||
		(o.To7Bit && (r.EightBit || r.NUL)) ||
		(o.asciiHeaders() && r.HeaderEightBit)
}

// Scan reads a message once and reports what making it conformant needs.
// Its errors wrap ErrHeaderTooBig, ErrTooDeep or a read error.
func Scan(r io.Reader) (*Report, error) {
	tr := &tailReader{r: r}
	rep := &Report{}
	if err := walk(tr, rep); err != nil {
		return nil, err
	}
	rep.Unterminated = tr.n > 0 && tr.last != '\n'
	return rep, nil
}

func (r *Report) flag(e *entity, f uint8) {
	for len(r.plan) <= e.ord {
		r.plan = append(r.plan, 0)
	}
	r.plan[e.ord] |= f
}

func (r *Report) header(e *entity, block, blank []byte) error {
	r.flag(e, 0)
	r.Entities = len(r.plan)
	if bytes.IndexByte(block, 0) >= 0 {
		r.NUL, r.hdrNUL = true, true
	}
	if hasHigh(block) {
		r.HeaderEightBit = true
		r.flag(e, fHdr8bit)
	}
	for len(block) > 0 {
		line := block
		if i := bytes.IndexByte(block, '\n'); i >= 0 {
			line, block = block[:i], block[i+1:]
			if len(line) > 0 && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			} else {
				r.BareLF = true
			}
		} else {
			block = nil
		}
		if bytes.IndexByte(line, '\r') >= 0 {
			r.BareCR = true
		}
		if len(line) > MaxLine {
			r.LongHeaders = true
			r.flag(e, fHdrLong)
			if _, ok := foldPoints(line, foldMin(line), r.scratch[:0]); !ok {
				r.Unfoldable = true
			}
		}
	}
	if len(blank) == 1 {
		r.BareLF = true
	}
	return nil
}

func (r *Report) bodyText(e *entity, c []byte, start bool) error {
	if start {
		r.curLen = 0
	}
	r.curLen += len(c)
	f := r.plan[e.ord]
	if r.curLen > MaxLine && f&fLong == 0 {
		r.LongLines = true
		r.flag(e, fLong)
	}
	if f&f8bit == 0 && hasHigh(c) {
		r.EightBit = true
		r.flag(e, f8bit)
	}
	if f&fNUL == 0 && bytes.IndexByte(c, 0) >= 0 {
		r.NUL = true
		r.flag(e, fNUL)
	}
	if !r.BareCR && bytes.IndexByte(c, '\r') >= 0 {
		r.BareCR = true
	}
	return nil
}

func (r *Report) bodyEOL(e *entity, eol []byte) error {
	if len(eol) == 1 {
		r.BareLF = true
	}
	return nil
}

func (r *Report) endLeaf(e *entity, eol []byte, delim bool) error {
	return r.bodyEOL(e, eol)
}

func (r *Report) raw(p piece) error {
	if p.start {
		r.curLen = 0
	}
	r.curLen += len(p.content)
	if r.curLen > MaxLine {
		r.LongLines, r.rawLong = true, true
	}
	if hasHigh(p.content) {
		r.EightBit, r.raw8 = true, true
	}
	if bytes.IndexByte(p.content, 0) >= 0 {
		r.NUL, r.raw8 = true, true
	}
	if bytes.IndexByte(p.content, '\r') >= 0 {
		r.BareCR = true
	}
	if len(p.eol) == 1 {
		r.BareLF = true
	}
	return nil
}

// hasHigh reports whether b has an octet ≥ 0x80, eight octets at a time.
func hasHigh(b []byte) bool {
	for len(b) >= 32 {
		x := binary.LittleEndian.Uint64(b) | binary.LittleEndian.Uint64(b[8:]) |
			binary.LittleEndian.Uint64(b[16:]) | binary.LittleEndian.Uint64(b[24:])
		if x&0x8080808080808080 != 0 {
			return true
		}
		b = b[32:]
	}
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// tailReader remembers the last octet read, to tell whether the message ends
// with a line end.
type tailReader struct {
	r    io.Reader
	n    int64
	last byte
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.n += int64(n)
		t.last = p[n-1]
	}
	return n, err
}
