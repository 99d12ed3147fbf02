package inject

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// readBlock is the size of a connection's read buffer, pooled. 32 KiB
// holds a pipelined transaction and is the unit a body is read in; it also
// bounds a command line (maxAuthLine is below it).
const readBlock = 32 << 10

var (
	errTooManySessions = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Too many sessions, try later"}
	errTooManyFromIP   = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many sessions from your address, try later"}
)

// ipKey is what per-client limits count by: the address, or its /64 for
// IPv6, since one host commonly holds a whole /64.
func ipKey(ip netip.Addr) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// track registers nc as a session, or says which limit refuses it.
func (s *Server) track(nc net.Conn) (*conn, *smtp.SMTPError) {
	ip := remoteIP(nc)
	key := ipKey(ip)
	if s.opts.Watermark.Over() {
		return nil, errQueueFull
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxSessions > 0 && len(s.conns) >= s.opts.MaxSessions {
		return nil, errTooManySessions
	}
	if s.opts.MaxSessionsPerIP > 0 && s.perIP[key] >= s.opts.MaxSessionsPerIP {
		return nil, errTooManyFromIP
	}
	c := &conn{srv: s, nc: nc, ip: ip, key: key}
	c.start.Store(time.Now().UnixNano())
	s.conns[c] = struct{}{}
	s.perIP[key]++
	s.connWG.Add(1)
	return c, nil
}

func (s *Server) untrack(c *conn) {
	c.nc.Close()
	s.mu.Lock()
	delete(s.conns, c)
	if s.perIP[c.key]--; s.perIP[c.key] <= 0 {
		delete(s.perIP, c.key)
	}
	s.mu.Unlock()
}

// refuseSession greets nc with e and closes it. The write is to a fresh
// socket whose send buffer is empty, so it does not block; the deadline is
// there for the pathological case. On an implicit-TLS listener the client
// reads this as a failed handshake, which is as good as a refusal.
func (s *Server) refuseSession(nc net.Conn, e *smtp.SMTPError) {
	ip := remoteIP(nc)
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	nc.Write(appendReply(nil, e.Code, e.EnhancedCode, e.Message))
	// Log before closing: once the client sees the close, the refusal is
	// on record.
	s.rejected(ip, "CONNECT", e)
	nc.Close()
}

// conn is one client connection and its session state (session.go).
type conn struct {
	srv *Server
	nc  net.Conn // the socket; rw is nc or the TLS layer on it
	rw  net.Conn
	ip  netip.Addr
	key netip.Prefix
	// start is when the session began (unix nanos): atomic, since a test
	// moves it back to play a long session.
	start       atomic.Int64
	implicitTLS bool

	// The read buffer: buf[r:w] is read and not consumed.
	buf  *[readBlock]byte
	r, w int
	// out buffers replies until flush.
	out []byte

	// bareLF is whether the last line readLine returned ended in a bare LF.
	bareLF bool

	inTxn       atomic.Bool // between MAIL and the end of DATA/RSET
	interrupted atomic.Bool // Shutdown poked a blocked Read with a deadline

	sess session
}

// errQuietClose ends a session without a reply (shutdown of an idle one).
var errQuietClose = errors.New("inject: closing idle session")

// interruptIfIdle makes a Read blocked on an idle session return now.
func (c *conn) interruptIfIdle() {
	if c.inTxn.Load() {
		return
	}
	c.interrupted.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

// buffered is how many read bytes wait to be consumed.
func (c *conn) buffered() int { return c.w - c.r }

// fill reads more into the buffer, compacting it first. timeout is the
// inactivity bound for this read. Replies are flushed before blocking, so a
// client never waits for a reply the server holds (RFC 2920 3.2).
func (c *conn) fill(timeout time.Duration) error {
	if err := c.flush(); err != nil {
		return err
	}
	if c.r > 0 {
		n := copy(c.buf[:], c.buf[c.r:c.w])
		c.r, c.w = 0, n
	}
	if c.w == len(c.buf) {
		return errors.New("inject: read buffer full") // callers never let this happen
	}
	for range 2 { // at most one retry, after a shutdown poke hit a transaction
		if timeout > 0 {
			c.nc.SetReadDeadline(time.Now().Add(timeout))
		} else {
			c.nc.SetReadDeadline(time.Time{})
		}
		// Shutdown sets draining before it pokes the deadline: if its
		// poke came before the deadline just set, and was overwritten,
		// draining is seen here.
		if c.srv.draining.Load() && !c.inTxn.Load() {
			return errQuietClose
		}
		n, err := c.rw.Read(c.buf[c.w:])
		c.w += n
		if n > 0 {
			c.interrupted.Store(false) // a poke that found the read busy is moot
			return nil
		}
		if err == nil {
			continue
		}
		if c.interrupted.Load() && isTimeout(err) {
			// The deadline was Shutdown's, not the client's fault. An idle
			// session ends quietly; one that began a transaction meanwhile
			// carries on.
			c.interrupted.Store(false)
			if !c.inTxn.Load() {
				return errQuietClose
			}
			continue
		}
		return err
	}
	return io.ErrNoProgress
}

// readLine returns the next line without its line end (LF, with a CR
// before it removed), and whether it was cut: a line longer than max is
// read to its end and discarded, and returned empty with tooLong set. The
// slice is valid until the next read.
func (c *conn) readLine(max int, timeout time.Duration) (line []byte, tooLong bool, err error) {
	scanned := 0
	for {
		if i := bytes.IndexByte(c.buf[c.r+scanned:c.w], '\n'); i >= 0 {
			end := c.r + scanned + i
			line = c.buf[c.r:end]
			c.r = end + 1
			if tooLong {
				return nil, true, nil
			}
			c.bareLF = len(line) == 0 || line[len(line)-1] != '\r'
			line = bytes.TrimSuffix(line, []byte{'\r'})
			if len(line) > max {
				return nil, true, nil
			}
			return line, false, nil
		}
		scanned = c.w - c.r
		if scanned > max+1 {
			// Over the bound already: drop what is buffered and keep
			// looking for the end of the line.
			tooLong = true
			c.r, c.w, scanned = 0, 0, 0
		}
		if err := c.fill(timeout); err != nil {
			return nil, tooLong, err
		}
	}
}

// reply queues one reply line.
func (c *conn) reply(code int, enh smtp.EnhancedCode, msg string) {
	c.out = appendReply(c.out, code, enh, msg)
}

// appendReply formats "code enh msg\r\n"; enh is left out when it is
// NoEnhancedCode (the greeting, 354, multi-line replies built by hand).
func appendReply(dst []byte, code int, enh smtp.EnhancedCode, msg string) []byte {
	dst = appendInt(dst, code)
	dst = append(dst, ' ')
	if enh != smtp.NoEnhancedCode && enh != smtp.EnhancedCodeNotSet {
		dst = appendInt(dst, enh[0])
		dst = append(dst, '.')
		dst = appendInt(dst, enh[1])
		dst = append(dst, '.')
		dst = appendInt(dst, enh[2])
		dst = append(dst, ' ')
	}
	dst = append(dst, msg...)
	return append(dst, '\r', '\n')
}

func appendInt(dst []byte, n int) []byte {
	if n >= 10 {
		dst = appendInt(dst, n/10)
	}
	return append(dst, byte('0'+n%10))
}

// flush writes the queued replies in one write.
func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	if d := c.srv.opts.WriteTimeout; d > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(d))
	}
	// Counted before the write, so a client that has read the reply also
	// sees the count.
	c.srv.writes.Add(1)
	_, err := c.rw.Write(c.out)
	c.out = c.out[:0]
	return err
}

// flushIfDrained flushes unless more pipelined commands are already read:
// their replies go out together (RFC 2920 3.2).
func (c *conn) flushIfDrained() error {
	if c.buffered() > 0 {
		return nil
	}
	return c.flush()
}

// startTLS puts TLS on the connection. Anything the client sent after
// STARTTLS in the clear is dropped, so it cannot be taken as sent under
// TLS (CVE-2011-0411, the STARTTLS command injection).
//
// conf is the TLS configuration read once by the caller: a reload may
// swap or remove it at any moment.
func (c *conn) startTLS(conf *tls.Config, timeout time.Duration) error {
	c.r, c.w = 0, 0
	if conf == nil {
		return errors.New("inject: TLS is no longer configured")
	}
	tc := tls.Server(c.nc, conf)
	if timeout > 0 {
		c.nc.SetDeadline(time.Now().Add(timeout))
	}
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc.SetDeadline(time.Time{})
	c.rw = tc
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// remoteIP is the client's address, IPv4-mapped IPv6 unmapped so that it
// matches IPv4 relay networks; the zero Addr if it is not TCP.
func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
