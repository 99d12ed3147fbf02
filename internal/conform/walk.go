package conform

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"sync"
)

// bufSize is the read buffer; a line longer than this arrives in pieces, and
// is then never taken for a boundary (a delimiter line is "--", at most 70
// octets of boundary, "--" and some padding).
const bufSize = 64 << 10

var (
	crlf = []byte("\r\n")
	lf   = []byte("\n")
	cr   = []byte("\r")
)

// lineReader cuts a stream into pieces of lines. A piece is content (without
// its line end) and the line end ("\r\n", "\n", or nil when the line goes on
// in the next piece or the stream ends without one). A CR that ends a buffer
// is held back until the next piece shows whether it starts a CRLF.
type lineReader struct {
	br      *bufio.Reader
	mid     bool   // the previous piece did not end its line
	heldCR  bool   // a CR was held back from the previous piece
	stash   []byte // a piece read but not yet returned (after a held CR)
	stashOK bool
	stashE  error
	eof     bool
}

type piece struct {
	content []byte
	eol     []byte
	start   bool // the piece begins a line
	whole   bool // the piece is a whole line (begins one and ends it or the stream)
}

func (l *lineReader) next() (piece, error) {
	var (
		b   []byte
		err error
	)
	if l.stashOK {
		b, err, l.stashOK = l.stash, l.stashE, false
	} else {
		if l.eof {
			return piece{}, io.EOF
		}
		b, err = l.br.ReadSlice('\n')
	}
	if l.heldCR {
		l.heldCR = false
		if len(b) > 0 && b[0] == '\n' { // the held CR and this LF end the line
			l.mid = false
			return piece{content: nil, eol: crlf}, l.noteEOF(err)
		}
		l.stash, l.stashE, l.stashOK = b, err, true
		return piece{content: cr}, nil // a bare CR, content after all
	}
	p := piece{start: !l.mid}
	switch {
	case err == nil: // ends in '\n'
		if len(b) >= 2 && b[len(b)-2] == '\r' {
			p.content, p.eol = b[:len(b)-2], crlf
		} else {
			p.content, p.eol = b[:len(b)-1], lf
		}
		p.whole = p.start
		l.mid = false
		return p, nil
	case errors.Is(err, bufio.ErrBufferFull):
		if b[len(b)-1] == '\r' {
			b, l.heldCR = b[:len(b)-1], true
		}
		p.content = b
		l.mid = true
		return p, nil
	case err == io.EOF:
		l.eof = true
		if len(b) == 0 && !l.heldCR {
			return piece{}, io.EOF
		}
		p.content = b
		p.whole = p.start
		l.mid = true
		return p, nil
	default:
		return piece{}, fmt.Errorf("conform: read: %w", err)
	}
}

func (l *lineReader) noteEOF(err error) error {
	if err == io.EOF {
		l.eof = true
		return nil
	}
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		return fmt.Errorf("conform: read: %w", err)
	}
	return nil
}

// entity is one MIME entity: the message, a body part, or a message inside a
// message/rfc822 part.
type entity struct {
	ord      int    // order of appearance, 0 for the message itself
	depth    int    // 0 for the message itself
	kind     kind   // how its body is read
	mtype    string // lower-case media type, "text/plain" when absent
	text     bool   // mtype is text/*
	cte      string // lower-case transfer encoding, "" when absent
	boundary string // for kindMultipart
	digest   bool   // multipart/digest: its parts default to message/rfc822
}

type kind uint8

const (
	kindLeaf      kind = iota // a body of lines
	kindMultipart             // parts between boundary lines
	kindMessage               // an encapsulated message (message/rfc822, identity encoding)
)

// identity reports whether the entity's transfer encoding leaves its octets
// as they are (RFC 2045 §6.2); an unknown one is not.
func (e *entity) identity() bool {
	switch e.cte {
	case "", "7bit", "8bit", "binary":
		return true
	}
	return false
}

// visitor receives the walk of a message. Content handed to it is only valid
// during the call.
type visitor interface {
	// header: an entity's header block (its fields with their line ends) and
	// the blank line that ended it (nil when a non-field line, a boundary or
	// the end of the stream ended it).
	header(e *entity, block, blank []byte) error
	// bodyText: a piece of a line of a leaf body, without its line end.
	bodyText(e *entity, content []byte, start bool) error
	// bodyEOL: the end of a leaf body line, known not to be the CRLF that
	// belongs to a following boundary delimiter (RFC 2046 §5.1.1).
	bodyEOL(e *entity, eol []byte) error
	// endLeaf: the leaf body ends. eol is the last line's end, pending;
	// delim says a boundary line follows, so eol belongs to it.
	endLeaf(e *entity, eol []byte, delim bool) error
	// raw: a piece of a preamble, epilogue or boundary line, copied as is.
	raw(p piece) error
}

type mode uint8

const (
	modeHeader mode = iota
	modeBody
	modePreamble
	modeEpilogue
)

type frame struct {
	boundary []byte
	depth    int // the multipart entity's depth
	digest   bool
}

type walker struct {
	v       visitor
	mode    mode
	cur     *entity // the entity whose header or leaf body is being read
	frames  []frame
	hdr     []byte
	ords    int
	pendEOL []byte // a leaf line end held until the next line is known
}

// readers recycles the 64 KiB read buffers: Scan runs on every injected
// message, and a fresh buffer each time was most of its allocation.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}

// walk reads a message and calls v for each piece of it, in order.
func walk(r io.Reader, v visitor) error {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	lr := &lineReader{br: br}
	w := &walker{v: v, cur: &entity{mtype: "text/plain", text: true}}
	w.ords = 1
	for {
		p, err := lr.next()
		if err == io.EOF {
			return w.end()
		}
		if err != nil {
			return err
		}
		if err := w.piece(p); err != nil {
			return err
		}
	}
}

func (w *walker) piece(p piece) error {
	for {
		if p.whole {
			if k, closing := w.matchBoundary(p.content); k >= 0 {
				return w.delimiter(p, k, closing)
			}
		}
		switch w.mode {
		case modeHeader:
			done, err := w.headerPiece(p)
			if err != nil || done {
				return err
			}
			// The header ended at a line that is not a field: that line
			// begins the body; dispatch it again in the new mode.
			continue
		case modeBody:
			if p.start && w.pendEOL != nil {
				if err := w.v.bodyEOL(w.cur, w.pendEOL); err != nil {
					return err
				}
				w.pendEOL = nil
			}
			if err := w.v.bodyText(w.cur, p.content, p.start); err != nil {
				return err
			}
			w.pendEOL = p.eol
			return nil
		default:
			return w.v.raw(p)
		}
	}
}

// headerPiece adds a piece to the header block; it returns false when the
// header ended without taking the piece.
func (w *walker) headerPiece(p piece) (bool, error) {
	if p.start {
		if len(p.content) == 0 && p.eol != nil {
			return true, w.endHeader(p.eol)
		}
		if !isFieldStart(p.content, len(w.hdr) == 0) {
			return false, w.endHeader(nil)
		}
	}
	if len(w.hdr)+len(p.content)+len(p.eol) > MaxHeaderBytes {
		return false, fmt.Errorf("conform: entity %d: %d octets and more: %w", w.cur.ord, MaxHeaderBytes, ErrHeaderTooBig)
	}
	w.hdr = append(w.hdr, p.content...)
	w.hdr = append(w.hdr, p.eol...)
	return true, nil
}

// isFieldStart: a line that can begin or continue a header field. A
// continuation (leading WSP) cannot be the first line of a block.
func isFieldStart(line []byte, first bool) bool {
	if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		return !first
	}
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t") // obs-optional allows WSP before the colon
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// endHeader parses the finished header block, hands it to the visitor and
// sets the mode its entity's body is read in.
func (w *walker) endHeader(blank []byte) error {
	e := w.cur
	parseEntity(e, w.hdr)
	if err := w.v.header(e, w.hdr, blank); err != nil {
		return err
	}
	w.hdr = w.hdr[:0]
	switch e.kind {
	case kindMultipart:
		w.frames = append(w.frames, frame{boundary: []byte(e.boundary), depth: e.depth, digest: e.digest})
		w.mode = modePreamble
		return nil
	case kindMessage:
		return w.open(e.depth+1, false)
	default:
		w.mode = modeBody
		w.pendEOL = nil
		return nil
	}
}

// open starts a new entity at depth whose header is read next.
func (w *walker) open(depth int, digestPart bool) error {
	if depth > MaxDepth {
		return fmt.Errorf("conform: more than %d levels: %w", MaxDepth, ErrTooDeep)
	}
	e := &entity{ord: w.ords, depth: depth, mtype: "text/plain", text: true}
	if digestPart {
		e.mtype, e.text = "message/rfc822", false
	}
	w.ords++
	w.cur = e
	w.mode = modeHeader
	w.hdr = w.hdr[:0]
	return nil
}

// matchBoundary finds the multipart level whose delimiter the line is, the
// innermost first, and whether it is the close delimiter. A level in its
// epilogue no longer matches its own boundary.
func (w *walker) matchBoundary(line []byte) (int, bool) {
	if len(w.frames) == 0 || len(line) < 3 || line[0] != '-' || line[1] != '-' {
		return -1, false
	}
	top := len(w.frames) - 1
	if w.mode == modeEpilogue {
		top--
	}
	for k := top; k >= 0; k-- {
		b := w.frames[k].boundary
		if !bytes.HasPrefix(line[2:], b) {
			continue
		}
		rest := line[2+len(b):]
		closing := bytes.HasPrefix(rest, []byte("--"))
		if closing {
			rest = rest[2:]
		}
		if len(bytes.Trim(rest, " \t")) == 0 { // transport padding
			return k, closing
		}
	}
	return -1, false
}

// delimiter ends whatever was open inside level k and starts its next part
// or its epilogue.
func (w *walker) delimiter(p piece, k int, closing bool) error {
	if w.mode == modeHeader {
		// A boundary ends a header block that had no blank line: the entity
		// has an empty body.
		if err := w.endHeader(nil); err != nil {
			return err
		}
		if w.mode == modeHeader { // message/rfc822 with nothing in it
			return w.delimiter(p, k, closing)
		}
	}
	if w.mode == modeBody {
		if err := w.v.endLeaf(w.cur, w.pendEOL, true); err != nil {
			return err
		}
		w.pendEOL = nil
	}
	w.frames = w.frames[:k+1]
	if err := w.v.raw(p); err != nil {
		return err
	}
	if closing {
		w.mode = modeEpilogue
		return nil
	}
	return w.open(w.frames[k].depth+1, w.frames[k].digest)
}

func (w *walker) end() error {
	if w.mode == modeHeader {
		if err := w.endHeader(nil); err != nil {
			return err
		}
		if w.mode == modeHeader {
			return w.end()
		}
	}
	if w.mode == modeBody {
		return w.v.endLeaf(w.cur, w.pendEOL, false)
	}
	return nil
}

// parseEntity reads Content-Type and Content-Transfer-Encoding from a header
// block. A Content-Type that does not parse leaves the default (RFC 2045
// §5.2), except that a recognisable type before broken parameters is kept.
func parseEntity(e *entity, block []byte) {
	ct, cte, haveCT := "", "", false
	eachField(block, func(name, _, value []byte) {
		switch {
		case !haveCT && asciiEqualFold(name, "content-type"):
			ct, haveCT = unfold(value), true
		case cte == "" && asciiEqualFold(name, "content-transfer-encoding"):
			v := strings.TrimSpace(unfold(value))
			if i := strings.IndexAny(v, " \t("); i >= 0 {
				v = v[:i]
			}
			cte = strings.ToLower(v)
		}
	})
	e.cte = cte
	if haveCT {
		mt, params, err := mime.ParseMediaType(ct)
		if mt != "" && strings.Contains(mt, "/") && (err == nil || errors.Is(err, mime.ErrInvalidMediaParameter)) {
			e.mtype = mt
			e.text = strings.HasPrefix(mt, "text/")
			if strings.HasPrefix(mt, "multipart/") && e.identity() {
				if b := params["boundary"]; b != "" && len(b) <= 200 {
					e.kind, e.boundary, e.digest = kindMultipart, b, mt == "multipart/digest"
				}
			}
		}
	}
	if e.mtype == "message/rfc822" && e.identity() {
		e.kind = kindMessage
	}
}

// eachField calls fn for each field of a header block with its name (without
// trailing WSP), its raw lines from the name to the last line end, and its
// value (raw after the colon).
func eachField(block []byte, fn func(name, raw, value []byte)) {
	for len(block) > 0 {
		end := 0
		for {
			i := bytes.IndexByte(block[end:], '\n')
			if i < 0 {
				end = len(block)
				break
			}
			end += i + 1
			if end >= len(block) || (block[end] != ' ' && block[end] != '\t') {
				break
			}
		}
		raw := block[:end]
		if c := bytes.IndexByte(raw, ':'); c > 0 {
			fn(bytes.TrimRight(raw[:c], " \t"), raw, raw[c+1:])
		}
		block = block[end:]
	}
}

// unfold removes the line ends of a folded field value (RFC 5322 §2.2.3).
func unfold(v []byte) string {
	s := string(v)
	s = strings.ReplaceAll(s, "\r\n", "")
	return strings.ReplaceAll(s, "\n", "")
}

func asciiEqualFold(b []byte, s string) bool {
	return len(b) == len(s) && strings.EqualFold(string(b), s)
}
