package smtpclient

import (
	"errors"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// With RequireTLS, a server that does not offer STARTTLS, or refuses it,
// ends the session before any MAIL: a temporary 4.7.4 in phase tls that
// wraps ErrTLSNotOffered. The scripted server fails the test if anything
// but QUIT follows.
func TestRequireTLS(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		script func(c *rawConn) error
	}{
		{"not offered", func(c *rawConn) error {
			if err := c.hello("PIPELINING"); err != nil {
				return err
			}
			if err := c.expect("QUIT"); err != nil {
				return err
			}
			return c.send("221 bye")
		}},
		{"refused", func(c *rawConn) error {
			if err := c.hello("PIPELINING", "STARTTLS"); err != nil {
				return err
			}
			if err := c.expect("STARTTLS"); err != nil {
				return err
			}
			if err := c.send("454 4.7.0 TLS not available"); err != nil {
				return err
			}
			if err := c.expect("QUIT"); err != nil {
				return err
			}
			return c.send("221 bye")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := startRaw(t, tc.script)
			c, err := New(dial(t, addr), Options{LocalName: localName, ServerName: "mx.test", RequireTLS: true})
			if err == nil {
				c.Close()
				t.Fatal("New succeeded without TLS")
			}
			e := outcome.As(err)
			if e == nil || e.Phase != outcome.PhaseTLS || !e.Temporary || e.Enhanced != (smtp.EnhancedCode{4, 7, 4}) || !errors.Is(err, ErrTLSNotOffered) {
				t.Fatalf("error %v (%+v), want temporary 4.7.4 in phase tls wrapping ErrTLSNotOffered", err, e)
			}
		})
	}
}

// With RequireTLS and a server offering STARTTLS, the session is up over
// TLS as usual.
func TestRequireTLSOffered(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, func(s *smtp.Server) { s.TLSConfig = serverTLSConfig() })
	c := newClient(t, addr, Options{RequireTLS: true})
	if !c.TLS() {
		t.Fatal("no TLS")
	}
	st, _ := c.TLSConnectionState()
	if st.Version < 0x0303 {
		t.Errorf("TLS version %x below 1.2", st.Version)
	}
}
