package connpool

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// The four kinds of receiver a TLS policy meets.
const (
	rxPlain    = iota // no STARTTLS
	rxBroken          // STARTTLS offered, every handshake fails
	rxSelf            // a self-signed certificate
	rxCASigned        // a certificate for its MX name from the test CA (tls.ca_file)
)

var rxNames = []string{"plain", "broken", "self", "ca"}

// want is what one policy does with one receiver.
type want struct {
	deliver  bool
	tls      bool              // delivered over TLS
	verified bool              // the record says verified
	enh      smtp.EnhancedCode // the deferral's code
}

// TestPolicyMatrix: each policy × each kind of receiver delivers, defers
// or falls back exactly as configs/mtad.yaml says, and a policy other than
// opportunistic never sends MAIL in clear text after a failed handshake
// (the sink counts MAIL FROM outside TLS).
func TestPolicyMatrix(t *testing.T) {
	t.Parallel()
	deliverClear := want{deliver: true}
	tlsUnverified := want{deliver: true, tls: true}
	tlsVerified := want{deliver: true, tls: true, verified: true}
	notOffered := want{enh: smtp.EnhancedCode{4, 7, 4}}
	failed := want{enh: smtp.EnhancedCode{4, 7, 5}}
	for i, tc := range []struct {
		mode tlspolicy.Mode
		want [4]want
	}{
		{tlspolicy.Opportunistic, [4]want{deliverClear, deliverClear, tlsUnverified, tlsVerified}},
		{tlspolicy.OpportunisticNoFallback, [4]want{deliverClear, failed, tlsUnverified, tlsVerified}},
		{tlspolicy.Required, [4]want{notOffered, failed, tlsUnverified, tlsVerified}},
		{tlspolicy.Verified, [4]want{notOffered, failed, failed, tlsVerified}},
		{tlspolicy.Disabled, [4]want{deliverClear, deliverClear, deliverClear, deliverClear}},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			t.Parallel()
			ca := loopbacktest.NewCA(t)
			octet := 40 + i
			ips := []string{ip(octet, 10), ip(octet, 11), ip(octet, 12), ip(octet, 13)}
			sinks, port := loopbacktest.StartSinks(t, ips, func(k int) loopbacktest.Config {
				switch k {
				case rxBroken:
					return loopbacktest.Config{TLS: loopbacktest.BrokenTLSConfig()}
				case rxSelf:
					return loopbacktest.Config{TLS: loopbacktest.TLSConfig(t)}
				case rxCASigned:
					return loopbacktest.Config{TLS: ca.TLSConfig(t, "mx.ca.test")}
				}
				return loopbacktest.Config{}
			})
			eng, err := tlspolicy.New(tlspolicy.Options{Roots: ca.Pool()})
			if err != nil {
				t.Fatal(err)
			}
			h := newHarness(t, port, nil, nil, func(o *Options) {
				o.TLSPolicy = eng
				o.Policy = func(*queue.DomainRecord, int) Policy { return Policy{TLS: tlspolicy.Settings{Mode: tc.mode}} }
			})
			for k, name := range rxNames {
				h.dns.Add(t, name+".test. 60 IN MX 10 mx."+name+".test.", "mx."+name+".test. 60 IN A "+ips[k])
			}
			for k, name := range rxNames {
				w := tc.want[k]
				dom := name + ".test"
				h.push(dom, 0, "x@"+dom)
				h.pool.Open(h.q.Domain(dom), 0, 1)
				if w.deliver {
					r := h.result()
					delivered(t, r)
					info := r.at.TLSInfo
					if r.at.TLS != w.tls || (info.Version != "") != w.tls || info.Verified != w.verified || info.Policy != string(tc.mode) {
						t.Errorf("%s: TLS %v, info %q; want tls %v verified %v policy %s", name, r.at.TLS, info, w.tls, w.verified, tc.mode)
					}
					if m := sinks[k].WaitMessages(t, 1); m[0].TLS != w.tls {
						t.Errorf("%s: sink got TLS=%v", name, m[0].TLS)
					}
					continue
				}
				f := h.connFail()
				e := outcome.As(f.err)
				if e == nil || !e.Temporary || e.Phase != outcome.PhaseTLS || e.Enhanced != w.enh ||
					!strings.Contains(f.err.Error(), "TLS policy "+string(tc.mode)+" requires it") {
					t.Errorf("%s: deferral %v (%+v), want temporary %v in phase tls naming the policy", name, f.err, e, w.enh)
				}
				if f.at.TLSInfo.String() != "none policy="+string(tc.mode) {
					t.Errorf("%s: record tls %q", name, f.at.TLSInfo)
				}
				if n := sinks[k].ClearMails(); n != 0 || len(sinks[k].Messages()) != 0 {
					t.Errorf("%s: %d MAIL FROM in clear text, %d messages: a deferral must send nothing", name, n, len(sinks[k].Messages()))
				}
			}
			// A second round: the opportunistic memory of the broken host
			// must not leak into a stricter policy, and the broken host
			// is remembered (one connection, in clear) only under
			// opportunistic.
			h.push("broken.test", 0, "y@broken.test")
			h.pool.Open(h.q.Domain("broken.test"), 0, 1)
			if tc.want[rxBroken].deliver {
				delivered(t, h.result())
			} else {
				h.connFail()
				if n := sinks[rxBroken].ClearMails(); n != 0 {
					t.Errorf("broken, second try: %d MAIL FROM in clear", n)
				}
			}
		})
	}
}

// stsWorld is a loopback MTA-STS setup: the harness's DNS serves the TXT
// records, an HTTPS server with a test-CA certificate serves the policies.
type stsWorld struct {
	h     *harness
	ca    *loopbacktest.CA
	sinks []*loopbacktest.Sink
	logs  *observer.ObservedLogs
	txt   *loopbacktest.DNS
}

func newSTSWorld(t *testing.T, octet int, policies map[string]string, routes ...func(port int) mx.Route) *stsWorld {
	t.Helper()
	ca := loopbacktest.NewCA(t)
	// Sinks: 0 CA-signed for the allowed MX names, 1 self-signed, 2 CA-signed (an unlisted MX).
	sinks, port := loopbacktest.StartSinks(t, []string{ip(octet, 10), ip(octet, 11), ip(octet, 12)}, func(k int) loopbacktest.Config {
		switch k {
		case 0:
			return loopbacktest.Config{TLS: ca.TLSConfig(t, "mx.good.test", "mx.testing.test")}
		case 1:
			return loopbacktest.Config{TLS: loopbacktest.TLSConfig(t)}
		}
		return loopbacktest.Config{TLS: ca.TLSConfig(t, "mx.other.test")}
	})
	var names []string
	for d := range policies {
		names = append(names, "mta-sts."+d)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		text, ok := policies[strings.TrimPrefix(r.Host, "mta-sts.")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(text))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, names...)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	core, logs := observer.New(zap.WarnLevel)
	// The TXT records come from a DNS server of their own: the harness's
	// is made with the pool.
	w := &stsWorld{ca: ca, sinks: sinks, logs: logs, txt: loopbacktest.StartDNS(t)}
	for d := range policies {
		w.txt.Add(t, "_mta-sts."+d+". 60 IN TXT \"v=STSv1; id=1\"", "mta-sts."+d+". 60 IN A 127.0.0.1")
	}
	var rts []mx.Route
	for _, r := range routes {
		rts = append(rts, r(port))
	}
	w.h = newHarness(t, port, nil, rts, func(o *Options) {
		sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Servers: []string{w.txt.Addr}, CacheDir: t.TempDir(),
			Roots: ca.Pool(), FetchTimeout: 5 * time.Second, AllowLoopback: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, srv.Listener.Addr().String())
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sts.Close)
		eng, err := tlspolicy.New(tlspolicy.Options{Roots: ca.Pool(), STS: sts, Logger: zap.New(core)})
		if err != nil {
			t.Fatal(err)
		}
		o.TLSPolicy = eng
		o.Policy = func(*queue.DomainRecord, int) Policy {
			return Policy{TLS: tlspolicy.Settings{Mode: tlspolicy.Opportunistic, MTASTS: true}}
		}
	})
	return w
}

// TestMTASTS: in enforce mode an MX the policy does not list is never
// used (even when preferred and its certificate verifies), and when none
// is listed, or the listed one's certificate does not verify, the mail is
// deferred naming MTA-STS, with nothing sent in clear text; testing mode
// delivers as the configured policy says and logs tls_policy warnings.
func TestMTASTS(t *testing.T) {
	t.Parallel()
	enforce := func(mx string) string { return "version: STSv1\nmode: enforce\nmx: " + mx + "\nmax_age: 86400\n" }
	w := newSTSWorld(t, 50, map[string]string{
		"good.test":    enforce("mx.good.test"),
		"badcert.test": enforce("*.badcert.test"),
		"nomatch.test": enforce("mx.elsewhere.test"),
		"testing.test": "version: STSv1\nmode: testing\nmx: mx.elsewhere.test\nmax_age: 86400\n",
	})
	h := w.h
	h.dns.Add(t,
		"good.test. 60 IN MX 5 mx.other.test.", "good.test. 60 IN MX 10 mx.good.test.",
		"mx.other.test. 60 IN A "+ip(50, 12), "mx.good.test. 60 IN A "+ip(50, 10),
		"badcert.test. 60 IN MX 10 mx.badcert.test.", "mx.badcert.test. 60 IN A "+ip(50, 11),
		"nomatch.test. 60 IN MX 10 mx.nomatch.test.", "mx.nomatch.test. 60 IN A "+ip(50, 12),
		"testing.test. 60 IN MX 10 mx.testing.test.", "mx.testing.test. 60 IN A "+ip(50, 11),
		"plain.test. 60 IN MX 10 mx.plain.test.", "mx.plain.test. 60 IN A "+ip(50, 11))

	h.push("good.test", 0, "x@good.test")
	h.pool.Open(h.q.Domain("good.test"), 0, 1)
	r := h.result()
	delivered(t, r)
	if r.at.MX != "mx.good.test" || r.at.TLSInfo.Policy != tlspolicy.LabelMTASTS || !r.at.TLSInfo.Verified {
		t.Errorf("good: via %s, tls %q; want mx.good.test, verified, policy=mta-sts", r.at.MX, r.at.TLSInfo)
	}

	for _, tc := range []struct{ dom, msg string }{
		{"badcert.test", "the certificate of mx.badcert.test did not verify, and the MTA-STS policy of badcert.test (enforce) requires it"},
		{"nomatch.test", "MTA-STS policy of nomatch.test (enforce) permits none of its MX hosts"},
	} {
		h.push(tc.dom, 0, "x@"+tc.dom)
		h.pool.Open(h.q.Domain(tc.dom), 0, 1)
		f := h.connFail()
		e := outcome.As(f.err)
		if e == nil || !e.Temporary || e.Enhanced != (smtp.EnhancedCode{4, 7, 5}) || !strings.Contains(f.err.Error(), tc.msg) {
			t.Errorf("%s: %v (%+v), want a temporary 4.7.5 saying %q", tc.dom, f.err, e, tc.msg)
		}
		if got := f.at.TLSInfo.String(); got != "none policy=mta-sts" {
			t.Errorf("%s: record tls %q", tc.dom, got)
		}
	}
	if n := w.sinks[2].Connections(); n != 0 {
		t.Errorf("the MX no policy lists got %d connections", n)
	}
	if n := w.sinks[1].ClearMails(); n != 0 {
		t.Errorf("%d MAIL FROM in clear text", n)
	}

	h.push("testing.test", 0, "x@testing.test")
	h.pool.Open(h.q.Domain("testing.test"), 0, 1)
	r = h.result()
	delivered(t, r)
	if r.at.TLSInfo.Policy != string(tlspolicy.Opportunistic) || r.at.TLSInfo.Verified || !r.at.TLS {
		t.Errorf("testing: tls %q", r.at.TLSInfo)
	}
	var reasons []string
	for _, e := range w.logs.FilterMessage("tls_policy").All() {
		if e.ContextMap()["domain"] == "testing.test" && e.ContextMap()["mode"] == "testing" {
			reasons = append(reasons, e.ContextMap()["reason"].(string))
		}
	}
	if got := strings.Join(reasons, "|"); got != "MX host not listed in the MTA-STS policy|certificate does not verify" {
		t.Errorf("testing mode warnings %q", got)
	}
	if n := len(w.sinks[1].Messages()); n != 1 {
		t.Errorf("self-signed sink has %d messages, want testing.test's one", n)
	}
}

// TestDANEHookAndMetrics: the DANE hook point. A host whose DANE check
// passes is used under policy "dane" even with a certificate no CA signed
// (DANE-EE); a check that fails the handshake, or a failed TLSA lookup,
// defers (4.7.5) and sends nothing in clear text. DANE wins over the
// configured policy. The metrics count the delivery and the failures.
func TestDANEHookAndMetrics(t *testing.T) {
	t.Parallel()
	self := loopbacktest.TLSConfig(t)
	leaf := self.Certificates[0].Certificate[0]
	sinks, port := loopbacktest.StartSinks(t, []string{ip(52, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{TLS: self}
	})
	reg := prometheus.NewRegistry()
	eng, err := tlspolicy.New(tlspolicy.Options{Metrics: reg,
		// Stands in for dane.go's Lookup + VerifyConnection: "match"
		// pins the sink's leaf, "mismatch" pins another, "bogus" fails.
		DANE: func(_ context.Context, host string) (func(tls.ConnectionState) error, error) {
			pin := func(want []byte) func(tls.ConnectionState) error {
				return func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, want) {
						return errors.New("no TLSA record matches")
					}
					return nil
				}
			}
			switch {
			case strings.HasPrefix(host, "mx.match."):
				return pin(leaf), nil
			case strings.HasPrefix(host, "mx.mismatch."):
				return pin([]byte("other")), nil
			case strings.HasPrefix(host, "mx.bogus."):
				return nil, errors.New("bogus answer")
			}
			return nil, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, nil, nil, func(o *Options) {
		o.TLSPolicy = eng
		o.Policy = func(*queue.DomainRecord, int) Policy {
			return Policy{TLS: tlspolicy.Settings{Mode: tlspolicy.Opportunistic, DANE: true}}
		}
	})
	for _, d := range []string{"match", "mismatch", "bogus"} {
		h.dns.Add(t, d+".test. 60 IN MX 10 mx."+d+".test.", "mx."+d+".test. 60 IN A "+ip(52, 10))
	}
	h.push("match.test", 0, "x@match.test")
	h.pool.Open(h.q.Domain("match.test"), 0, 1)
	r := h.result()
	delivered(t, r)
	if got := r.at.TLSInfo; got.Policy != tlspolicy.LabelDANE || !got.Verified {
		t.Errorf("match: tls %q", got)
	}
	for _, d := range []string{"mismatch", "bogus"} {
		h.push(d+".test", 0, "x@"+d+".test")
		h.pool.Open(h.q.Domain(d+".test"), 0, 1)
		f := h.connFail()
		if e := outcome.As(f.err); e == nil || !e.Temporary || e.Enhanced != (smtp.EnhancedCode{4, 7, 5}) || !strings.Contains(f.err.Error(), "DANE") {
			t.Errorf("%s: %v, want a temporary 4.7.5 naming DANE", d, f.err)
		}
	}
	if n := sinks[0].ClearMails(); n != 0 {
		t.Errorf("%d MAIL FROM in clear text", n)
	}
	if n := len(sinks[0].Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
	for _, m := range []struct {
		name   string
		labels map[string]string
	}{
		{"mtad_tls_deliveries_total", map[string]string{"policy": "dane", "verified": "true"}},
		{"mtad_tls_failures_total", map[string]string{"policy": "dane", "reason": "certificate"}},
		{"mtad_tls_failures_total", map[string]string{"policy": "dane", "reason": "tlsa_lookup"}},
	} {
		if v := counter(t, reg, m.name, m.labels); v != 1 {
			t.Errorf("%s%v = %v, want 1", m.name, m.labels, v)
		}
	}
}

// counter reads one counter of reg with exactly labels.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestRouteExemptFromMTASTS: a domain sent to a static route is not held
// to its MTA-STS policy, which lists its MX hosts and not the route the
// operator chose (an enforce policy would refuse every delivery).
func TestRouteExemptFromMTASTS(t *testing.T) {
	t.Parallel()
	w := newSTSWorld(t, 51, map[string]string{
		"routed.test": "version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 86400\n",
	}, func(port int) mx.Route {
		return mx.Route{Domain: "routed.test", Host: fmt.Sprintf("%s:%d", ip(51, 10), port)}
	})
	h := w.h
	h.push("routed.test", 0, "x@routed.test")
	h.pool.Open(h.q.Domain("routed.test"), 0, 1)
	r := h.result()
	delivered(t, r)
	if r.at.TLSInfo.Policy != string(tlspolicy.Opportunistic) {
		t.Errorf("routed: tls %q, want the pair's own policy, not MTA-STS", r.at.TLSInfo)
	}
}
