package smtpclient

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// The server answers nothing until DATA has arrived: a client that waits
// for the MAIL reply before sending RCPT would stall, and the server's
// read deadline would fail the test. The data is checked as it was on the
// wire: bare LF turned into CRLF, dots stuffed.
func TestPipeliningSeenByServer(t *testing.T) {
	t.Parallel()
	var wire string
	addr := startRaw(t, func(c *rawConn) error {
		if err := c.hello("PIPELINING", "SIZE 10000", "8BITMIME"); err != nil {
			return err
		}
		var got []string
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for len(got) < 10 {
			l, err := c.line()
			if err != nil {
				return fmt.Errorf("client did not pipeline (got %q): %w", got, err)
			}
			got = append(got, l)
			if l == "DATA" {
				break
			}
		}
		want := []string{"MAIL FROM:<a@src.test> SIZE=17 BODY=8BITMIME", "RCPT TO:<x@dst.test>", "RCPT TO:<y@dst.test>", "RCPT TO:<z@dst.test>", "DATA"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			return fmt.Errorf("group %q, want %q", got, want)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := c.send("250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user", "250 2.1.5 ok", "354 go ahead"); err != nil {
			return err
		}
		d, err := c.data()
		if err != nil {
			return err
		}
		wire = d
		if err := c.send("250 2.0.0 queued as ABC"); err != nil {
			return err
		}
		if err := c.expect("QUIT"); err != nil {
			return err
		}
		return c.send("221 bye")
	})
	c := newClient(t, addr, Options{})
	body := "line1\nline2\n.dot\n" // 17 bytes
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test", "y@dst.test", "z@dst.test"}, Size: int64(len(body)), EightBit: true}, Bytes([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Data != nil || res.Rcpt[0] != nil || res.Rcpt[2] != nil || res.Rcpt[1] == nil || res.Rcpt[1].Code != 550 {
		t.Fatalf("result %+v", res)
	}
	if res.DotReply != "queued as ABC" {
		t.Errorf("DotReply = %q", res.DotReply)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if want := "line1\r\nline2\r\n..dot\r\n.\r\n"; wire != want {
		t.Errorf("wire data %q, want %q", wire, want)
	}
}

// Without PIPELINING the client waits for each reply; HELO follows a
// refused EHLO.
func TestHELOFallbackAndSerialTransaction(t *testing.T) {
	t.Parallel()
	addr := startRaw(t, func(c *rawConn) error {
		steps := []struct{ expect, reply string }{
			{"EHLO " + localName, "502 5.5.1 what?"},
			{"HELO " + localName, "250 mx.test"},
			{"MAIL FROM:<>", "250 ok"},
			{"RCPT TO:<x@dst.test>", "250 ok"},
			{"RCPT TO:<y@dst.test>", "451 4.3.0 later"},
			{"DATA", "354 go"},
		}
		if err := c.send("220 mx.test old server"); err != nil {
			return err
		}
		for _, s := range steps {
			if err := c.expect(s.expect); err != nil {
				return err
			}
			if err := c.send(s.reply); err != nil {
				return err
			}
		}
		if d, err := c.data(); err != nil || d != "bounce\r\n.\r\n" {
			return fmt.Errorf("data %q, %v", d, err)
		}
		if err := c.send("250 ok"); err != nil {
			return err
		}
		if err := c.expect("QUIT"); err != nil {
			return err
		}
		return c.send("221 bye")
	})
	c := newClient(t, addr, Options{})
	if len(c.Extensions()) != 0 {
		t.Errorf("Extensions after HELO = %v", c.Extensions())
	}
	res, err := c.Send(Envelope{To: []string{"x@dst.test", "y@dst.test"}}, Bytes([]byte("bounce")))
	if err != nil {
		t.Fatal(err)
	}
	if res.Data != nil || res.Rcpt[0] != nil || res.Rcpt[1] == nil || !res.Rcpt[1].Temporary {
		t.Fatalf("result %+v", res)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// RFC 2920 §3.1: a server that answers 354 when no recipient was accepted
// gets "." alone, and the next transaction starts with RSET.
func TestData354WithoutRecipients(t *testing.T) {
	t.Parallel()
	addr := startRaw(t, func(c *rawConn) error {
		if err := c.hello("PIPELINING"); err != nil {
			return err
		}
		for _, l := range []string{"MAIL FROM:<a@src.test>", "RCPT TO:<x@dst.test>", "DATA"} {
			if err := c.expect(l); err != nil {
				return err
			}
		}
		if err := c.send("250 ok", "550 5.1.1 unknown", "354 go ahead anyway"); err != nil {
			return err
		}
		if err := c.expect("."); err != nil {
			return fmt.Errorf("after a 354 with no recipients: %w", err)
		}
		if err := c.send("554 5.5.1 no valid recipients"); err != nil {
			return err
		}
		for _, l := range []string{"RSET", "MAIL FROM:<a@src.test>", "RCPT TO:<y@dst.test>", "DATA"} {
			if err := c.expect(l); err != nil {
				return err
			}
		}
		if err := c.send("250 reset", "250 ok", "250 ok", "354 go"); err != nil {
			return err
		}
		if _, err := c.data(); err != nil {
			return err
		}
		return c.send("250 ok")
	})
	c := newClient(t, addr, Options{})
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test"}}, Bytes([]byte("secret body\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if res.Data == nil || res.Rcpt[0] == nil || res.Rcpt[0].Code != 550 {
		t.Fatalf("result %+v", res)
	}
	res, err = c.Send(Envelope{From: "a@src.test", To: []string{"y@dst.test"}}, Bytes([]byte("body\r\n")))
	if err != nil || res.Data != nil {
		t.Fatalf("second Send = %+v, %v", res, err)
	}
}

// A 421 anywhere makes the connection unusable: Send returns an error
// carrying the reply, and later calls fail without touching the wire.
func Test421(t *testing.T) {
	t.Parallel()
	t.Run("greeting", func(t *testing.T) {
		t.Parallel()
		addr := startRaw(t, func(c *rawConn) error {
			return c.send("421 4.3.2 too busy")
		})
		_, err := New(dial(t, addr), Options{LocalName: localName})
		if e := outcome.As(err); e == nil || e.Phase != outcome.PhaseGreeting || e.Code != 421 || !e.Temporary {
			t.Fatalf("New = %v, want a 421 greeting error", err)
		}
	})
	t.Run("greeting 554", func(t *testing.T) {
		t.Parallel()
		addr := startRaw(t, func(c *rawConn) error {
			if err := c.send("554 5.7.1 no service for you"); err != nil {
				return err
			}
			return c.expect("QUIT")
		})
		_, err := New(dial(t, addr), Options{LocalName: localName})
		if e := outcome.As(err); e == nil || e.Phase != outcome.PhaseGreeting || e.Code != 554 || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 7, 1}) {
			t.Fatalf("New = %v, want a 554 greeting error", err)
		}
	})
	t.Run("rcpt", func(t *testing.T) {
		t.Parallel()
		addr := startRaw(t, func(c *rawConn) error {
			if err := c.hello("SIZE"); err != nil {
				return err
			}
			if err := c.expect("MAIL FROM:<a@src.test>"); err != nil {
				return err
			}
			if err := c.send("250 ok"); err != nil {
				return err
			}
			if err := c.expect("RCPT TO:<x@dst.test>"); err != nil {
				return err
			}
			if err := c.send("421 4.3.2 shutting down"); err != nil {
				return err
			}
			return c.untilEOF()
		})
		c := newClient(t, addr, Options{})
		res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test", "y@dst.test"}}, Bytes([]byte("x")))
		e := outcome.As(err)
		if res != nil || e == nil || e.Code != 421 || e.Phase != outcome.PhaseRcpt || !e.Temporary || e.Message != "shutting down" {
			t.Fatalf("Send = %+v, %v; want a 421 error", res, err)
		}
		if _, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test"}}, Body{}); !outcome.IsTemporary(err) {
			t.Errorf("Send after 421 = %v", err)
		}
		if err := c.Quit(); err != nil {
			t.Errorf("Quit on a broken session = %v, want it just closed", err)
		}
	})
}

// A server that stops answering trips the phase's deadline.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	short := 50 * time.Millisecond
	t.Run("greeting", func(t *testing.T) {
		t.Parallel()
		addr := startRaw(t, func(c *rawConn) error { return c.untilEOF() })
		_, err := New(dial(t, addr), Options{LocalName: localName, Timeouts: Timeouts{Greeting: short}})
		e := outcome.As(err)
		if e == nil || e.Phase != outcome.PhaseGreeting || !e.Temporary || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("New = %v, want a greeting timeout", err)
		}
	})
	t.Run("dot", func(t *testing.T) {
		t.Parallel()
		addr := startRaw(t, func(c *rawConn) error {
			if err := c.hello("PIPELINING"); err != nil {
				return err
			}
			for range 3 {
				if _, err := c.line(); err != nil {
					return err
				}
			}
			if err := c.send("250 ok", "250 ok", "354 go"); err != nil {
				return err
			}
			if _, err := c.data(); err != nil {
				return err
			}
			return c.untilEOF() // and never answer
		})
		c := newClient(t, addr, Options{Timeouts: Timeouts{DataTerm: short}})
		res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test"}}, Bytes([]byte("x\r\n")))
		e := outcome.As(err)
		if res != nil || e == nil || e.Phase != outcome.PhaseDot || !e.Temporary || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Send = %+v, %v; want a timeout after the dot", res, err)
		}
	})
}

func TestProtocolViolations(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		script func(c *rawConn) error
		phase  outcome.Phase
	}{
		{"garbage greeting", func(c *rawConn) error {
			return c.send("hello, I am not an SMTP server")
		}, outcome.PhaseGreeting},
		{"mixed codes", func(c *rawConn) error {
			if err := c.send("220 mx.test"); err != nil {
				return err
			}
			if err := c.expect("EHLO " + localName); err != nil {
				return err
			}
			return c.send("250-mx.test", "251 PIPELINING")
		}, outcome.PhaseEHLO},
		{"endless reply", func(c *rawConn) error {
			if err := c.send("220 mx.test"); err != nil {
				return err
			}
			if err := c.expect("EHLO " + localName); err != nil {
				return err
			}
			lines := make([]string, 1000)
			for i := range lines {
				lines[i] = "250-X" + fmt.Sprint(i)
			}
			c.send(lines...) // the client may hang up before all is written
			return nil
		}, outcome.PhaseEHLO},
		{"data injected after STARTTLS", func(c *rawConn) error {
			if err := c.hello("STARTTLS"); err != nil {
				return err
			}
			if err := c.expect("STARTTLS"); err != nil {
				return err
			}
			// One write, so the injected line arrives with the 220.
			return c.send("220 go ahead", "250 injected")
		}, outcome.PhaseTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := startRaw(t, func(c *rawConn) error {
				if err := tc.script(c); err != nil {
					return err
				}
				c.untilEOF()
				return nil
			})
			_, err := New(dial(t, addr), Options{LocalName: localName})
			if e := outcome.As(err); e == nil || e.Phase != tc.phase || !e.Temporary {
				t.Fatalf("New = %v, want a temporary %s error", err, tc.phase)
			}
		})
	}
}
