package mx

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLookupMetrics: every query to the loopback DNS is one sample of
// mtad_dns_lookup_seconds under its type, answered or failed; a second
// resolver on the same registry (a reload) shares the histogram.
func TestLookupMetrics(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"m.test. 300 IN MX 10 mx.m.test.",
		"mx.m.test. 300 IN A 127.0.0.1",
	)
	z.setRcode("fail.test.", dns.RcodeServerFailure)
	reg := prometheus.NewRegistry()
	addr := startDNS(t, z)
	r := newResolver(t, addr, func(o *Options) { o.Metrics = reg })
	newResolver(t, addr, func(o *Options) { o.Metrics = reg }) // reuses the histogram
	if _, err := r.Lookup(t.Context(), "m.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(t.Context(), "fail.test"); err == nil {
		t.Fatal("SERVFAIL resolved")
	}
	count := func(typ, result string) uint64 {
		t.Helper()
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				l := map[string]string{}
				for _, p := range m.GetLabel() {
					l[p.GetName()] = p.GetValue()
				}
				if f.GetName() == "mtad_dns_lookup_seconds" && l["type"] == typ && l["result"] == result {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
		return 0
	}
	// Each sample is one question the server saw (the failing one once:
	// one server, no retry).
	if got, want := count("MX", "answer"), uint64(z.count("m.test.", dns.TypeMX)); got != 1 || want != 1 {
		t.Errorf("MX answered: %d samples, %d queries; want 1 and 1", got, want)
	}
	if got := count("A", "answer"); got != uint64(z.count("mx.m.test.", dns.TypeA)) || got == 0 {
		t.Errorf("A answered: %d samples, %d queries", got, z.count("mx.m.test.", dns.TypeA))
	}
	if got := count("MX", "error"); got != 1 {
		t.Errorf("MX failed: %d samples, want 1", got)
	}
	if n := testutil.CollectAndCount(reg, "mtad_dns_lookup_seconds"); n < 3 {
		t.Errorf("%d series, want MX answer, A answer, MX error at least", n)
	}
}
