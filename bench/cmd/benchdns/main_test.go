package main

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/mtad/mtad/bench/internal/topo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startTest(t *testing.T) string {
	t.Helper()
	doms, err := topo.Domains(5)
	if err != nil {
		t.Fatal(err)
	}
	s, err := start("127.0.0.1:0", newZone(doms))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.close(); err != nil {
			t.Error(err)
		}
	})
	return fmt.Sprintf("127.0.0.1:%d", s.port)
}

func TestAnswers(t *testing.T) {
	t.Parallel()
	addr := startTest(t)
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  string // the answer's data, "" for none
	}{
		{"d3.bench.", dns.TypeMX, dns.RcodeSuccess, "10 mx.d3.bench."},
		{"HOT.bench.", dns.TypeMX, dns.RcodeSuccess, "10 mx.hot.bench."},
		{"mx.d3.bench.", dns.TypeA, dns.RcodeSuccess, "127.0.1.4"},
		{"mx.hot.bench.", dns.TypeA, dns.RcodeSuccess, "127.0.2.1"},
		{"mx.d3.bench.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"d3.bench.", dns.TypeA, dns.RcodeSuccess, ""},
		{"d5.bench.", dns.TypeMX, dns.RcodeNameError, ""}, // only d0..d4 exist
		{"example.com.", dns.TypeMX, dns.RcodeNameError, ""},
	}
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto}
		for _, tc := range tests {
			m := new(dns.Msg)
			m.SetQuestion(tc.name, tc.qtype)
			r, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatalf("%s %s: %v", proto, tc.name, err)
			}
			if r.Rcode != tc.rcode {
				t.Errorf("%s %s type %d: rcode %d, want %d", proto, tc.name, tc.qtype, r.Rcode, tc.rcode)
			}
			got := ""
			switch {
			case len(r.Answer) > 1:
				t.Errorf("%s %s: %d answers, want at most 1", proto, tc.name, len(r.Answer))
			case len(r.Answer) == 1:
				switch rr := r.Answer[0].(type) {
				case *dns.MX:
					got = fmt.Sprintf("%d %s", rr.Preference, rr.Mx)
				case *dns.A:
					got = rr.A.String()
				}
			}
			if got != tc.want {
				t.Errorf("%s %s type %d: answer %q, want %q", proto, tc.name, tc.qtype, got, tc.want)
			}
		}
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	if _, err := start("0.0.0.0:0", newZone(nil)); err == nil {
		t.Fatal("start on 0.0.0.0 succeeded, want an error")
	}
}
