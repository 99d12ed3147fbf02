package hooks_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/outcome"
)

// closedPort returns a loopback address nothing listens on: a port the
// kernel handed out a moment ago.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return addr
}

func TestConnErrFromRealDials(t *testing.T) {
	t.Parallel()
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name   string
		ctx    context.Context
		dialer net.Dialer
		want   hooks.ConnErr
	}{
		{"closed port", context.Background(), net.Dialer{}, hooks.ConnErrRefused},
		// 192.0.2.1 (TEST-NET-1) is on no interface here: bind(2) fails
		// with EADDRNOTAVAIL before anything is sent.
		{"source address not on host", context.Background(),
			net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.1")}}, hooks.ConnErrBind},
		{"expired deadline", expired, net.Dialer{}, hooks.ConnErrTimeout},
		{"canceled", canceled, net.Dialer{}, hooks.ConnErrCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := tt.dialer.DialContext(tt.ctx, "tcp", closedPort(t))
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if got := hooks.ConnErrFromDial(err); got != tt.want {
				t.Fatalf("ConnErrFromDial(%v) = %v, want %v", err, got, tt.want)
			}
			// The code survives wrapping in the outcome vocabulary.
			wrapped := fmt.Errorf("dialing mx: %w", &outcome.Error{Phase: outcome.PhaseConnect, Temporary: true, Err: err})
			if got := hooks.ConnErrFromDial(wrapped); got != tt.want {
				t.Fatalf("wrapped: ConnErrFromDial = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConnErrFromErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want hooks.ConnErr
	}{
		{nil, 0},
		{&net.DNSError{Err: "no such host", Name: "nx.test", IsNotFound: true}, hooks.ConnErrNXDomain},
		{&net.DNSError{Err: "i/o timeout", Name: "slow.test", IsTimeout: true}, hooks.ConnErrTimeout},
		{&net.DNSError{Err: "server misbehaving", Name: "bad.test"}, hooks.ConnErrMXLookup},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("something odd")}, hooks.ConnErrSocket},
		{context.DeadlineExceeded, hooks.ConnErrTimeout},
	}
	for _, tt := range tests {
		if got := hooks.ConnErrFromDial(tt.err); got != tt.want {
			t.Errorf("ConnErrFromDial(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestConnErrString(t *testing.T) {
	t.Parallel()
	all := []hooks.ConnErr{hooks.ConnErrMXLookup, hooks.ConnErrNullMX, hooks.ConnErrNoMXReachable,
		hooks.ConnErrProhibitedIP, hooks.ConnErrHostMax, hooks.ConnErrSocket, hooks.ConnErrBind,
		hooks.ConnErrRefused, hooks.ConnErrNetUnreachable, hooks.ConnErrTimeout, hooks.ConnErrTLS,
		hooks.ConnErrNXDomain, hooks.ConnErrGreeting, hooks.ConnErrCanceled}
	seen := map[string]bool{}
	for _, c := range all {
		s := c.String()
		if c >= 0 || s == "unknown" || seen[s] {
			t.Errorf("ConnErr %d: value or name %q wrong or repeated", int(c), s)
		}
		seen[s] = true
	}
	if hooks.ConnErrRefused.String() != "refused" || hooks.ConnErr(-999).String() != "unknown" {
		t.Error("String names changed")
	}
	if !hooks.ConnErrHostMax.Local() || !hooks.ConnErrCanceled.Local() || hooks.ConnErrRefused.Local() {
		t.Error("Local wrong")
	}
}
