package smtpclient

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	fs "github.com/mtad/mtad/internal/faultsrv"
	"github.com/mtad/mtad/internal/outcome"
)

// TestTransactionDeadline: a server answering MAIL, RCPT and DATA each
// well inside the 2s per-command limit (0.4s) runs into the 1s
// transaction deadline; the error says so and wraps ErrDeadline, the
// connection is unusable, and the next Send fails at once.
func TestTransactionDeadline(t *testing.T) {
	t.Parallel()
	slow := func(s string) fs.Step { return fs.Drip(s, 50*time.Millisecond) } // 8 bytes: 0.4s
	srv := fs.Start(t, "127.0.0.1:0", fs.Script{fs.Hang()}, fs.Then(fs.Greeting(), fs.EHLO(),
		fs.Expect("MAIL"), slow("250 ok\r\n"), fs.Expect("RCPT"), slow("250 ok\r\n"),
		fs.Expect("DATA"), slow("354 go\r\n"), fs.Hang()))
	to := Timeouts{Mail: 2 * time.Second, Rcpt: 2 * time.Second, DataInit: 2 * time.Second, Transaction: time.Second}
	c := newClient(t, srv.Addr(), Options{LocalName: "client.test", Timeouts: to})
	defer c.Close()
	res, err := c.Send(Envelope{From: "a@x.test", To: []string{"b@y.test"}}, Bytes([]byte("hi\r\n")))
	e := outcome.As(err)
	if res != nil || e == nil || !errors.Is(err, ErrDeadline) || !e.Temporary ||
		!strings.Contains(e.Message, "transaction deadline (1s) exceeded") {
		t.Fatalf("Send = %v, %v", res, err)
	}
	if _, err := c.Send(Envelope{From: "a@x.test", To: []string{"b@y.test"}}, Bytes([]byte("hi\r\n"))); err == nil {
		t.Error("a second Send on the broken connection succeeded")
	}
}

// TestSessionStartDeadline: Options.Deadline cuts a greeting wait shorter
// than its own limit, and the error wraps ErrDeadline; a per-phase
// timeout inside the deadline does not.
func TestSessionStartDeadline(t *testing.T) {
	t.Parallel()
	srv := fs.Start(t, "127.0.0.1:0", fs.Script{fs.Hang()})
	for _, tc := range []struct {
		name               string
		greeting, deadline time.Duration
		overall            bool
	}{{"deadline first", 2 * time.Second, 200 * time.Millisecond, true}, {"greeting limit first", 300 * time.Millisecond, time.Hour, false}} {
		conn, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(conn, Options{LocalName: "client.test", Timeouts: Timeouts{Greeting: tc.greeting},
			Deadline: time.Now().Add(tc.deadline)})
		e := outcome.As(err)
		if e == nil || e.Phase != outcome.PhaseGreeting || errors.Is(err, ErrDeadline) != tc.overall ||
			strings.Contains(e.Message, "deadline") != tc.overall || !tc.overall && !strings.Contains(e.Message, "timed out") {
			t.Errorf("%s: New = %v", tc.name, err)
		}
	}
}
