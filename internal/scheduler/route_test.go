package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/mx"
)

func TestDomainOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, key string
		bad       bool
	}{
		{"u@example.com", "example.com", false},
		{"u@Example.COM.", "example.com", false},
		{"u@bücher.example", "xn--bcher-kva.example", false},
		{"U@BÜCHER.Example", "xn--bcher-kva.example", false},
		{"u@xn--bcher-kva.example", "xn--bcher-kva.example", false},
		{`"a@b"@bücher.example`, "xn--bcher-kva.example", false},
		{"u@[192.0.2.1]", "[192.0.2.1]", false},
		{"u@[IPv6:2001:DB8::1]", "[IPv6:2001:db8::1]", false},
		{"u@[ipv6:2001:db8:0::1]", "[IPv6:2001:db8::1]", false},
		{"nodomain", "", false},
		{"u@", "", false},
		{"u@[192.0.2.1", "[192.0.2.1", true},
		{"u@[2001:db8::1]", "[2001:db8::1]", true},
		{"u@bü_cher.Example", "bü_cher.example", true},
		{"u@a..b", "a..b", true},
	} {
		key, err := domainOf(tc.addr)
		if key != tc.key || (err != nil) != tc.bad {
			t.Errorf("domainOf(%q) = %q, %v; want %q, error %v", tc.addr, key, err, tc.key, tc.bad)
		}
	}
}

// TestIDNRoutedByALabel: recipients at a U-label domain, written in two
// cases and as the A-label, share one queue keyed by the A-label, whose MX
// (and only that name) is looked up; the sink, offering SMTPUTF8, gets the
// addresses as they were sent, in one transaction.
func TestIDNRoutedByALabel(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(40, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{SMTPUTF8: true}
	})
	h := newHarness(t, port, nil)
	h.mxFor("xn--bcher-kva.example", ip(40, 10))
	rcpts := []string{"u@bücher.example", "v@BÜCHER.example", "w@xn--bcher-kva.example"}
	m := h.inject("alice@origin.test", rcpts...)
	for range rcpts {
		e := h.next(outcomeEvents...)
		if e.name != "delivered" || e.str("domain") != "xn--bcher-kva.example" || e.str("mx") != "mx.xn--bcher-kva.example" {
			t.Errorf("%s: %s domain %q mx %q %v", e.str("recipient"), e.name, e.str("domain"), e.str("mx"), e.fields)
		}
	}
	msgs := sinks[0].WaitMessages(t, 1)
	if len(msgs) != 1 || strings.Join(msgs[0].To, " ") != strings.Join(rcpts, " ") {
		t.Fatalf("sink got %d messages, first to %q; want one to %q", len(msgs), msgs[0].To, rcpts)
	}
	h.gone(m.ID)
}

// TestAddressLiteralDelivered: u@[127.0.0.1] goes to 127.0.0.1 on the
// delivery port with no MX lookup (the test DNS knows nothing about it),
// under the literal's own queue key, and IPv6 spellings of one address
// share a queue.
func TestAddressLiteralDelivered(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{"127.0.0.1"}, nil)
	h := newHarness(t, port, nil)
	m := h.inject("", "a@[127.0.0.1]", "b@[127.0.0.1]")
	for range 2 {
		e := h.next(outcomeEvents...)
		if e.name != "delivered" || e.str("domain") != "[127.0.0.1]" || e.str("mx") != "127.0.0.1" {
			t.Errorf("%s: %s domain %q mx %q", e.str("recipient"), e.name, e.str("domain"), e.str("mx"))
		}
	}
	msgs := sinks[0].WaitMessages(t, 1)
	if got := strings.Join(msgs[0].To, " "); got != "a@[127.0.0.1] b@[127.0.0.1]" {
		t.Errorf("sink got RCPT %q", got)
	}
	h.gone(m.ID)
}

// TestAddressLiteralRefused: without allow-loopback, a loopback literal is
// bounced as prohibited (5.4.4, DNS phase: the resolver's decision) and
// nothing is dialled; a malformed literal and a name that is no IDN are
// bounced (5.1.2) before any lookup, without counting an attempt.
func TestAddressLiteralRefused(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{"127.0.0.1"}, nil)
	var strict *mx.Resolver
	h := newHarness(t, port, func(o *Options) {
		var err error
		strict, err = mx.New(mx.Options{Servers: []string{"127.0.0.1:1"}, Port: port, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		o.Pool.Resolver = strict
	})
	h.inject("", "a@[127.0.0.1]")
	e := h.next(outcomeEvents...)
	if e.name != "bounced" || e.str("enhanced_code") != "5.4.4" || e.str("phase") != "dns" || e.str("domain") != "[127.0.0.1]" {
		t.Errorf("loopback literal: %s %v", e.name, e.fields)
	}
	for _, tc := range []struct{ rcpt, domain string }{
		{"b@[127.0.0.1", "[127.0.0.1"},
		{"c@[::1]", "[::1]"},
		{"d@bü_cher.example", "bü_cher.example"},
	} {
		h.inject("", tc.rcpt)
		e := h.next(outcomeEvents...)
		if e.name != "bounced" || e.str("enhanced_code") != "5.1.2" || e.str("phase") != "queue" ||
			e.str("domain") != tc.domain || e.fields["attempt"] != int64(0) ||
			!strings.Contains(e.str("response"), "bad destination domain") {
			t.Errorf("%s: %s %v", tc.rcpt, e.name, e.fields)
		}
	}
	if n := sinks[0].Connections(); n != 0 {
		t.Errorf("sink at 127.0.0.1 got %d connections, want none", n)
	}
	if h.s.Pending() != 0 {
		t.Errorf("%d messages still tracked", h.s.Pending())
	}
}

// FuzzDomainOf checks that a routable key is its own canonical form, so
// two spellings of one destination share a queue, and that an unroutable
// domain is reported with a key to log. (That key may be routable once
// lower-cased — the fuzzer found "Ӏ", which IDNA refuses and whose lower
// case it accepts — so Submit keeps unroutable groups apart by key.)
func FuzzDomainOf(f *testing.F) {
	for _, s := range []string{"u@bücher.example", "u@[IPv6:2001:DB8::1]", "u@Example.COM.", "nodomain", "u@", "u@[1.2.3.4", `"a@b"@x.test`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		key, err := domainOf(addr)
		if err != nil {
			if key == "" {
				t.Fatalf("domainOf(%q): error %v with an empty key", addr, err)
			}
			return
		}
		if key == "" {
			return
		}
		if c, err := mx.Canonical(key); err != nil || c != key {
			t.Fatalf("domainOf(%q) = %q, whose canonical form is %q, %v", addr, key, c, err)
		}
	})
}
