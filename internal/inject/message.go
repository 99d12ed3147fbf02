package inject

import (
	"bytes"
	"errors"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/spool"
)

// msgWriter assembles one message as its body streams in: the Received
// field first, then the header section (held back, up to
// maxHeaderSection, to read and strip the binding fields and count
// Received fields), then the rest straight into the store's Body. It is
// the scanner's bodySink.
type msgWriter struct {
	srv  *Server
	id   string
	date time.Time
	body *spool.BodyWriter
	sc   dataScanner // BDAT only: the scanner state across chunks

	tooBig bool
	// doomed is set once the content so far decides a refusal (a NUL; a
	// long line under long_lines: reject): the rest is read and dropped,
	// not written to the store, so a 10 MB line costs no spool writes.
	doomed bool

	hdr     *[]byte // the header section so far; nil once written
	hdrDone bool
	h       headerInfo
	herr    *smtp.SMTPError // a refusal found in the header section
	werr    error           // the store's write error
}

// newMsgWriter starts a body with the Received field for the current
// transaction.
func (c *conn) newMsgWriter() *msgWriter {
	s := c.srv
	ss := &c.sess
	mw := &msgWriter{srv: s, id: s.store.NewID(), date: time.Now(), body: s.store.NewBody()}
	rcpts := make([]string, len(ss.rcpts))
	for i, r := range ss.rcpts {
		rcpts[i] = r.addr
	}
	var tb [512]byte
	_, mw.werr = mw.body.Write(appendReceived(tb[:0], traceInfo{
		helo:  ss.helo,
		smtp:  !ss.esmtp,
		ip:    c.ip,
		host:  s.traceHost,
		tls:   ss.tls,
		auth:  ss.authUser != "",
		utf8:  ss.mp.utf8,
		id:    mw.id,
		from:  ss.from,
		rcpts: rcpts,
		date:  mw.date,
	}))
	mw.hdr = s.getHdrBuf()
	return mw
}

func (s *Server) getHdrBuf() *[]byte {
	if b, ok := s.hdrBufs.Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, 4<<10)
	return &b
}

func (mw *msgWriter) releaseHdr() {
	if mw.hdr != nil {
		mw.srv.hdrBufs.Put(mw.hdr)
		mw.hdr = nil
	}
}

// checkSize marks the message too big once in, the client's content
// octets so far (dataScanner.in), pass MaxMessageSize: a body of exactly
// the limit is taken, whatever line-end repair adds to it.
func (mw *msgWriter) checkSize(in int64) {
	if in > mw.srv.opts.MaxMessageSize {
		mw.tooBig = true
	}
}

// noteScan takes in what the scanner has seen so far: the size, and
// whether the content already decides a refusal.
func (mw *msgWriter) noteScan(sc *dataScanner) {
	mw.checkSize(sc.in)
	if sc.nul || sc.long && mw.srv.opts.LongLines == LongLinesReject {
		mw.doomed = true
	}
}

// emit takes the next output of the scanner.
func (mw *msgWriter) emit(p []byte) {
	if mw.tooBig || mw.doomed || mw.herr != nil || mw.werr != nil {
		return // refused already: read on, keep nothing
	}
	if !mw.hdrDone {
		h := *mw.hdr
		from := max(0, len(h)-3)
		take := min(len(p), maxHeaderSection-len(h))
		h = append(h, p[:take]...)
		*mw.hdr = h
		p = p[take:]
		if headerEnd(h, from) < 0 && len(h) < maxHeaderSection {
			return
		}
		mw.endHeaders()
		if mw.herr != nil || mw.werr != nil {
			return
		}
	}
	if len(p) > 0 {
		_, mw.werr = mw.body.Write(p)
	}
}

// headerEnd returns where the empty line ending the header section ends in
// h (normalised to CRLF), searching from from, or -1.
func headerEnd(h []byte, from int) int {
	if bytes.HasPrefix(h, crlf) {
		return 2
	}
	if i := bytes.Index(h[from:], []byte("\r\n\r\n")); i >= 0 {
		return from + i + 4
	}
	return -1
}

// endHeaders parses the held-back head of the message, decides on what it
// holds and writes it, stripped, to the body. A head cut at
// maxHeaderSection is parsed as far as it goes.
func (mw *msgWriter) endHeaders() {
	if mw.hdrDone {
		return
	}
	mw.hdrDone = true
	defer mw.releaseHdr()
	if mw.tooBig || mw.werr != nil {
		return
	}
	h := *mw.hdr
	info, err := parseHeaders(h)
	if err != nil {
		mw.herr = errMalformedHdr
		var ce conflictError
		if errors.As(err, &ce) {
			mw.herr = rep(550, 5, 7, 0, ce.Reply())
		}
		return
	}
	mw.h = info
	if info.received > mw.srv.opts.MaxReceivedHeaders {
		mw.herr = errHops
		return
	}
	if e := mw.srv.checkBinding(info.group, info.binding); e != nil {
		mw.herr = e
		return
	}
	_, mw.werr = mw.body.Write(info.strip(h))
}

// abort drops the body.
func (mw *msgWriter) abort() {
	mw.releaseHdr()
	if mw.body != nil {
		mw.body.Abort()
		mw.body = nil
	}
}
