package smtpclient

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"sync"

	"github.com/mtad/mtad/internal/outcome"
)

// Body is a message body for Send, made by Bytes, Stream or Produce. The
// zero Body is an empty body.
//
// A body comes from memory, from a reader that knows its size (the spool's
// BodyReader), or from a function that writes it (a conversion whose size
// is known only once it is done). Send streams the last two in pieces of
// at most streamChunk bytes, so a session never holds a large body whole
// (DESIGN invariant 5).
type Body struct {
	b       []byte
	r       io.Reader
	size    int64
	produce func(w io.Writer) error
}

// Bytes is a body already in memory. Send writes it straight from b, never
// copying it whole.
func Bytes(b []byte) Body { return Body{b: b, size: int64(len(b))} }

// Stream is a body read from r, of size bytes as stored (before any line
// end repair; -1 when unknown). Send reads r to its end or to its first
// error; an error from r ends the session without ending the message, so
// the receiver never takes a truncated body for a whole one.
func Stream(r io.Reader, size int64) Body { return Body{r: r, size: size} }

// Produce is a body written by f into the writer it is given, for a body
// made on the way (converted to 7 bits, say) whose size is not known
// before it is sent: it always goes by DATA. An error from f ends the
// session as a reader's error does in Stream.
func Produce(f func(w io.Writer) error) Body { return Body{produce: f, size: -1} }

// Size is the body's size as given, -1 when unknown.
func (b Body) Size() int64 { return b.size }

// streamChunk is the most body a session holds while it streams: the read
// buffer, and the size of one BDAT chunk. The spool's chunk (256 KiB) is
// the other copy in memory while a spooled body is sent.
const streamChunk = 64 << 10

// bdatChunk is the size from which a BDAT chunk of a streamed body is sent
// (the last one may be smaller). Line end repair can double what a read
// brings, so the chunk buffer has room for one more read, doubled, past it:
// no chunk is over bdatChunk+2*streamChunk (256 KiB).
const bdatChunk = 2 * streamChunk

// streamBufs are the buffers a Send streams through, shared by all
// Clients so that an idle connection holds none (a pool of 1,000 idle
// connections would otherwise pin 1,000 buffers).
var streamBufs = sync.Pool{New: func() any { return new(streamBuf) }}

type streamBuf struct {
	in    [streamChunk]byte
	chunk []byte // a BDAT chunk being filled, cap bdatChunk+2*streamChunk
}

// dotWriter writes SMTP DATA content as it comes, in any pieces: lines
// that start with "." get a second one (RFC 5321 §4.5.2), bare CR and bare
// LF become CRLF, and close adds a final CRLF when needed and the end of
// data line. Its output for a body split anywhere equals its output for
// the body whole (FuzzStreamBody checks it), which writeBody gives.
//
// Runs of bytes that need no change are written straight from the
// caller's slice. Write errors are sticky in the bufio.Writer; the caller's
// Flush reports them, and Write returns the first so a producer stops.
type dotWriter struct {
	w *bufio.Writer
	// lineStart: the next byte starts a line (a "." there is stuffed).
	lineStart bool
	// afterCR: the last byte was a CR, already written as CRLF; an LF
	// next is its pair and is dropped.
	afterCR bool
	err     error
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, lineStart: true} }

func (d *dotWriter) Write(b []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n := len(b)
	if d.afterCR && len(b) > 0 {
		d.afterCR = false
		if b[0] == '\n' {
			b = b[1:]
		}
	}
	run := 0 // start of the bytes not yet written, which need no change
	for i := 0; i < len(b); {
		if d.lineStart {
			d.lineStart = false
			if b[i] == '.' {
				d.write(b[run:i])
				d.w.WriteByte('.')
				run = i // the line's own '.' goes out with the run
			}
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
			d.lineStart = true
		case cr >= 0 && cr+1 == len(rest):
			// A CR ends this piece: write CRLF now, drop an LF that
			// starts the next one.
			d.write(b[run : i+cr])
			d.w.WriteString("\r\n")
			i += cr + 1
			run = i
			d.lineStart, d.afterCR = true, true
		case cr >= 0:
			// A bare CR ends the line.
			d.write(b[run : i+cr])
			d.w.WriteString("\r\n")
			i += cr + 1
			run = i
			d.lineStart = true
		case nl >= 0:
			// A bare LF.
			d.write(b[run : i+nl])
			d.w.WriteString("\r\n")
			i += nl + 1
			run = i
			d.lineStart = true
		default:
			// The rest of a line that goes on in the next piece.
			i = len(b)
		}
	}
	d.write(b[run:])
	return n, d.err
}

func (d *dotWriter) write(b []byte) {
	if _, err := d.w.Write(b); err != nil && d.err == nil {
		d.err = err
	}
}

// close ends the last line if it is open and writes the end of data.
func (d *dotWriter) close() error {
	if !d.lineStart {
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	return d.err
}

// crlfAppender appends a body to a buffer with every line end made CRLF,
// as dotWriter does but without dot-stuffing: what a BDAT chunk carries
// (RFC 3030 sends bytes as they are, so the repair must happen here).
type crlfAppender struct {
	afterCR   bool // as in dotWriter
	lineStart bool // the last byte appended ended a line (or none was)
}

func newCRLFAppender() crlfAppender { return crlfAppender{lineStart: true} }

// append appends b repaired to dst; it grows by at most 2*len(b).
func (a *crlfAppender) append(dst, b []byte) []byte {
	if a.afterCR && len(b) > 0 {
		a.afterCR = false
		if b[0] == '\n' {
			b = b[1:]
		}
	}
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		end := len(b)
		if nl >= 0 {
			end = nl
		}
		cr := bytes.IndexByte(b[:end], '\r')
		switch {
		case nl > 0 && cr == nl-1:
			dst = append(dst, b[:nl+1]...)
			b = b[nl+1:]
			a.lineStart = true
		case cr >= 0:
			dst = append(append(dst, b[:cr]...), '\r', '\n')
			b = b[cr+1:]
			a.lineStart = true
			if len(b) == 0 {
				a.afterCR = true
			}
		case nl >= 0:
			dst = append(append(dst, b[:nl]...), '\r', '\n')
			b = b[nl+1:]
			a.lineStart = true
		default:
			dst = append(dst, b...)
			b = nil
			a.lineStart = false
		}
	}
	return dst
}

// finish appends the CRLF that ends an open last line.
func (a *crlfAppender) finish(dst []byte) []byte {
	if !a.lineStart {
		dst = append(dst, '\r', '\n')
		a.lineStart = true
	}
	return dst
}

// writeData buffers body as DATA content and the end of data. A body that
// fails to read midway breaks the connection: the end of data must not be
// sent after a truncated body.
func (c *Client) writeData(body Body) error {
	switch {
	case body.produce != nil:
		dw := newDotWriter(c.bw)
		perr := body.produce(dw)
		if dw.err != nil {
			return c.ioError(outcome.PhaseData, "writing the message body", dw.err)
		}
		if perr != nil {
			return c.bodyError(perr)
		}
		dw.close()
		return nil
	case body.r != nil:
		buf := streamBufs.Get().(*streamBuf)
		defer streamBufs.Put(buf)
		dw := newDotWriter(c.bw)
		err := readAll(body.r, buf.in[:], func(p []byte) error {
			_, err := dw.Write(p)
			return err
		})
		if dw.err != nil {
			return c.ioError(outcome.PhaseData, "writing the message body", dw.err)
		}
		if err != nil {
			return c.bodyError(err)
		}
		dw.close()
		return nil
	}
	writeBody(c.bw, body.b)
	return nil
}

// errSinkFailed marks an error of readAll's sink rather than of its reader.
var errSinkFailed = errors.New("smtpclient: writing failed")

// maxEmptyReads bounds the reads in a row that return nothing (io.Reader
// allows them, rarely), so a broken reader cannot spin a session forever.
const maxEmptyReads = 100

// readAll reads r to its end into buf, handing each piece to sink. It
// returns errSinkFailed when sink failed (the caller knows why), r's
// error when r failed, nil at io.EOF.
func readAll(r io.Reader, buf []byte, sink func([]byte) error) error {
	empty := 0
	for {
		n, err := r.Read(buf)
		if n > 0 {
			empty = 0
			if sink(buf[:n]) != nil {
				return errSinkFailed
			}
		} else if err == nil {
			if empty++; empty > maxEmptyReads {
				return io.ErrNoProgress
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// bodyError is a body that could not be read (the spool failed): the
// transaction is abandoned with the connection, so that no part of the
// body is taken for the whole.
func (c *Client) bodyError(err error) error {
	return c.markBroken(&outcome.Error{Phase: outcome.PhaseData, Enhanced: enhLocalRead, Temporary: true,
		Message: "reading the message body", Err: err})
}

// sendChunkedStream sends a streamed body with BDAT (RFC 3030) in chunks
// of bdatChunk bytes or a little more (the last may be smaller), each line
// end repaired to CRLF as it is copied into the chunk, so every BDAT's
// count is exact whatever the body holds.
//
// A body of at most maxChunkedBody goes in the envelope's pipelined group,
// its BDAT replies read after the envelope's: one round trip, as
// sendChunked. A larger one waits for the RCPT replies first, so a refused
// transaction does not cost the body; its chunks are then pipelined with
// one reply outstanding, and a refused chunk stops the sending (RFC 3030
// §2: no BDAT after a failed one).
func (c *Client) sendChunkedStream(env Envelope, body Body, res *Result) (*Result, error) {
	eager := body.size >= 0 && body.size <= maxChunkedBody
	rset := c.writeEnvelope(env, res)
	var (
		mailErr  *outcome.Error
		accepted int
		err      error
	)
	if !eager {
		if err := c.flush(outcome.PhaseMail, "MAIL/RCPT"); err != nil {
			return nil, err
		}
		if mailErr, accepted, err = c.readEnvelope(env, res, rset); err != nil {
			return nil, err
		}
		if mailErr != nil {
			res.Data = mailErr
			return res, nil
		}
		c.dirty = true
		if accepted == 0 {
			res.Data = noValidRecipients(res)
			return res, nil
		}
	}
	// The transaction is over only once BDAT LAST succeeded.
	c.dirty = true
	buf := streamBufs.Get().(*streamBuf)
	defer streamBufs.Put(buf)
	if buf.chunk == nil {
		buf.chunk = make([]byte, 0, bdatChunk+2*streamChunk)
	}
	var (
		pending int            // BDAT replies not read yet
		refused *outcome.Error // the first refused chunk
		app     = newCRLFAppender()
		chunk   = buf.chunk[:0]
	)
	rerr := readAll(body.r, buf.in[:], func(p []byte) error {
		if len(chunk) >= bdatChunk {
			// More follows: this chunk is not the last.
			if err := c.writeChunk(chunk, false, !eager); err != nil {
				return err
			}
			pending++
			chunk = chunk[:0]
			if !eager && pending > 1 {
				pending--
				e, _, err := c.readChunkReply(false)
				if err != nil {
					return err
				}
				if e != nil {
					refused = e
					return e
				}
			}
		}
		chunk = app.append(chunk, p)
		return nil
	})
	switch {
	case rerr == errSinkFailed && refused == nil:
		return nil, c.broken // writeChunk or readChunkReply broke the connection
	case rerr != nil && rerr != errSinkFailed:
		return nil, c.bodyError(rerr)
	}
	if refused == nil {
		chunk = app.finish(chunk)
		if err := c.writeChunk(chunk, true, true); err != nil {
			return nil, err
		}
		pending++
	}
	if eager {
		if err := c.flush(outcome.PhaseData, "MAIL/RCPT/BDAT and the message"); err != nil {
			return nil, err
		}
		if mailErr, accepted, err = c.readEnvelope(env, res, rset); err != nil {
			return nil, err
		}
		c.dirty = true // readEnvelope's RSET reply cleared it
	}
	var last reply
	for ; pending > 0; pending-- {
		e, r, err := c.readChunkReply(pending == 1 && refused == nil)
		if err != nil {
			return nil, err
		}
		if refused == nil && e != nil && pending > 1 {
			refused = e
		}
		last = r
	}
	switch {
	case mailErr != nil:
		res.Data = mailErr
		return res, nil
	case accepted == 0:
		// The server refuses BDAT without a valid recipient.
		res.Data = noValidRecipients(res)
		return res, nil
	case refused != nil:
		res.Data = refused
		return res, nil
	}
	if last.class() == 2 {
		c.dirty = false
	}
	return c.endOfData(res, last)
}

// writeChunk buffers "BDAT n" (with LAST) and the chunk, and flushes when
// asked.
func (c *Client) writeChunk(chunk []byte, last, flush bool) error {
	c.dw.timeout = c.t.DataBlock
	b := append(c.cmd[:0], "BDAT "...)
	b = strconv.AppendInt(b, int64(len(chunk)), 10)
	if last {
		b = append(b, " LAST"...)
	}
	b = append(b, "\r\n"...)
	c.cmd = b
	c.bw.Write(b)
	c.bw.Write(chunk)
	if flush {
		return c.flush(outcome.PhaseData, "a BDAT chunk")
	}
	return nil
}

// readChunkReply reads the reply to one BDAT: (nil, r, nil) taken,
// (refusal, r, nil) refused, err when the connection is unusable.
func (c *Client) readChunkReply(last bool) (*outcome.Error, reply, error) {
	phase, timeout := outcome.PhaseData, c.t.DataBlock
	if last {
		phase, timeout = outcome.PhaseDot, c.t.DataTerm
	}
	r, err := c.readReply(phase, timeout, last)
	if err != nil {
		return nil, r, err
	}
	switch r.class() {
	case 2:
		return nil, r, nil
	case 4, 5:
		return outcome.FromReply(phase, r.smtpError()), r, nil
	}
	return nil, r, c.protocolError(phase, r)
}
