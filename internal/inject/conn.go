package inject

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// replyTooManySessions is written, raw, to a connection over MaxSessions.
const replyTooManySessions = "Too many sessions, try later"

// trackedListener counts connections against MaxSessions and wraps each one
// so that Shutdown can find and drain it.
type trackedListener struct {
	net.Listener
	srv       *Server
	closeOnce sync.Once
	closeErr  error
}

// Accept returns the next connection within the session limit. Connections
// over the limit are answered 421 4.3.2 and closed here, so go-smtp never
// sees them.
func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.srv.track(c); tc != nil {
			return tc, nil
		}
		l.srv.refuseSession(c)
	}
}

// Close is idempotent: Shutdown closes the listeners itself before
// go-smtp's Shutdown closes them again.
func (l *trackedListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

// track registers c as a session, or returns nil when MaxSessions are open.
func (s *Server) track(c net.Conn) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxSessions > 0 && len(s.conns) >= s.opts.MaxSessions {
		return nil
	}
	tc := &trackedConn{Conn: c, srv: s, ip: remoteIP(c)}
	s.conns[tc] = struct{}{}
	return tc
}

func (s *Server) untrack(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// refuseSession greets c with 421 and closes it. The write is to a fresh
// socket whose send buffer is empty, so it does not block; the deadline is
// there for the pathological case.
func (s *Server) refuseSession(c net.Conn) {
	ip := remoteIP(c)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("421 4.3.2 " + replyTooManySessions + "\r\n"))
	// Log before closing: once the client sees the close, the refusal is
	// on record.
	s.rejected(ip, "CONNECT", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: replyTooManySessions})
	c.Close()
}

// trackedConn is one client connection. It knows whether its session is
// inside a mail transaction, which is what Shutdown needs to decide whether
// to close it now or let it finish.
type trackedConn struct {
	net.Conn
	srv *Server
	ip  netip.Addr

	inTxn       atomic.Bool // between MAIL and the end of DATA/RSET
	interrupted atomic.Bool // Shutdown poked a blocked Read with a deadline
	closeOnce   sync.Once
}

// Read refuses to read another command once the server is draining and the
// session is idle: go-smtp sees io.EOF and ends the connection quietly.
func (c *trackedConn) Read(p []byte) (int, error) {
	for range 2 { // at most one retry, after a shutdown poke hit a transaction
		if c.srv.draining.Load() && !c.inTxn.Load() {
			return 0, io.EOF
		}
		n, err := c.Conn.Read(p)
		if err == nil || n > 0 || !c.interrupted.Load() || !isTimeout(err) {
			return n, err
		}
		// The deadline was Shutdown's, not the client's fault. If a
		// transaction started meanwhile, give the read its timeout back
		// and carry on; otherwise the loop returns io.EOF.
		c.interrupted.Store(false)
		if d := max(c.srv.opts.ReadTimeout, c.srv.opts.DataTimeout); d > 0 {
			c.Conn.SetReadDeadline(time.Now().Add(d))
		} else {
			c.Conn.SetReadDeadline(time.Time{})
		}
	}
	return 0, io.EOF
}

// interruptIfIdle makes a Read blocked on an idle session return now.
func (c *trackedConn) interruptIfIdle() {
	if c.inTxn.Load() {
		return
	}
	c.interrupted.Store(true)
	c.Conn.SetReadDeadline(time.Now())
}

// Close closes the connection and frees its session slot.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.srv.untrack(c) })
	return err
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

// connOf finds our trackedConn under go-smtp's current connection, which is
// a *tls.Conn wrapping it after STARTTLS.
func connOf(c net.Conn) (*trackedConn, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, ok := c.(*trackedConn)
	return t, ok
}
