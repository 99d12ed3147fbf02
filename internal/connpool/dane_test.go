package connpool

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// tlsaHex is the SHA-256 of b in hex, the data of a "x y 1" TLSA record.
func tlsaHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestDANEEndToEnd: DANE through the real delivery path, with the adapter
// the daemon uses (tlspolicy.DANEChecker over tlspolicy.NewDANE) asking a
// loopback resolver that sets the AD bit. A matching DANE-EE(3 1 1) record
// and a DANE-TA(2 0 1) record of the sinks' CA deliver over verified TLS
// under policy dane; a mismatching record, or a receiver that does not
// offer STARTTLS, defers with a temporary code naming DANE and sends no
// MAIL FROM at all; records in an answer without the AD bit are not DANE
// (the configured opportunistic policy applies); and a domain with both an
// enforced MTA-STS policy and DANE records is delivered under DANE, to a
// receiver whose certificate MTA-STS alone would refuse. (The policy's mx
// list still decides which hosts may be used: the MX answer itself is not
// checked for DNSSEC, so DANE records of a host an attacker named must not
// lift it.)
func TestDANEEndToEnd(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	caCert := ca.Certificate(t, "mx.ta.test")
	self := loopbacktest.TLSConfig(t)
	selfLeaf, err := x509.ParseCertificate(self.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherSPKI, err := x509.MarshalPKIXPublicKey(&otherKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	const (
		rxEE       = iota // self-signed; its key is in a 3 1 1 record
		rxTA              // CA-signed for mx.ta.test; the CA is in a 2 0 1 record
		rxMismatch        // self-signed; the 3 1 1 record names another key
		rxPlain           // no STARTTLS, TLSA records all the same
		rxNoAD            // no STARTTLS; its records come without the AD bit
	)
	ips := []string{ip(70, 10), ip(70, 11), ip(70, 12), ip(70, 13), ip(70, 14)}
	sinks, port := loopbacktest.StartSinks(t, ips, func(k int) loopbacktest.Config {
		switch k {
		case rxEE, rxMismatch:
			return loopbacktest.Config{TLS: self}
		case rxTA:
			return loopbacktest.Config{TLS: &tls.Config{Certificates: []tls.Certificate{caCert}}}
		}
		return loopbacktest.Config{}
	})

	// The validating resolver DANE asks: address and TLSA records of the
	// MX hosts (at _<port>._tcp, the sinks' port, as delivery.port would
	// make it), the AD bit on every answer but mx.noad.test's.
	res := loopbacktest.StartDNS(t)
	res.SetSecure(true)
	tlsa := map[string]string{
		"ee":       "3 1 1 " + tlsaHex(selfLeaf.RawSubjectPublicKeyInfo),
		"ta":       "2 0 1 " + tlsaHex(caCert.Certificate[1]),
		"mismatch": "3 1 1 " + tlsaHex(otherSPKI),
		"plain":    "3 1 1 " + tlsaHex(selfLeaf.RawSubjectPublicKeyInfo),
		"noad":     "3 1 1 " + tlsaHex(selfLeaf.RawSubjectPublicKeyInfo),
		"both":     "3 1 1 " + tlsaHex(selfLeaf.RawSubjectPublicKeyInfo),
	}
	sinkOf := map[string]int{"ee": rxEE, "ta": rxTA, "mismatch": rxMismatch, "plain": rxPlain, "noad": rxNoAD, "both": rxEE}
	for n, rec := range tlsa {
		res.Add(t, "mx."+n+".test. 60 IN A "+ips[sinkOf[n]],
			"_"+strconv.Itoa(port)+"._tcp.mx."+n+".test. 60 IN TLSA "+rec)
	}
	res.SetInsecure("mx.noad.test.", "_"+strconv.Itoa(port)+"._tcp.mx.noad.test.")

	// both.test also has an enforced MTA-STS policy listing its MX.
	txt := loopbacktest.StartDNS(t)
	txt.Add(t, "_mta-sts.both.test. 60 IN TXT \"v=STSv1; id=1\"", "mta-sts.both.test. 60 IN A 127.0.0.1")
	web := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("version: STSv1\nmode: enforce\nmx: mx.both.test\nmax_age: 86400\n"))
	}))
	web.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, "mta-sts.both.test")}}
	web.StartTLS()
	t.Cleanup(web.Close)
	sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Servers: []string{txt.Addr}, Roots: ca.Pool(),
		FetchTimeout: 5 * time.Second, AllowLoopback: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, web.Listener.Addr().String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sts.Close)

	dane := tlspolicy.DANEChecker(tlspolicy.NewDANE([]string{res.Addr}, 2*time.Second, port), ca.Pool())
	eng, err := tlspolicy.New(tlspolicy.Options{Roots: ca.Pool(), STS: sts, DANE: dane})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, nil, nil, func(o *Options) {
		o.TLSPolicy = eng
		o.Policy = func(*queue.DomainRecord, int) Policy {
			return Policy{TLS: tlspolicy.Settings{Mode: tlspolicy.Opportunistic, MTASTS: true, DANE: true}}
		}
	})
	for n := range tlsa {
		h.dns.Add(t, n+".test. 60 IN MX 10 mx."+n+".test.", "mx."+n+".test. 60 IN A "+ips[sinkOf[n]])
	}

	send := func(dom string) {
		h.push(dom, 0, "x@"+dom)
		h.pool.Open(h.q.Domain(dom), 0, 1)
	}
	for _, dom := range []string{"ee.test", "ta.test", "both.test"} {
		send(dom)
		r := h.result()
		delivered(t, r)
		if got := r.at.TLSInfo.String(); !r.at.TLS || !strings.HasSuffix(got, " verified policy=dane") {
			t.Errorf("%s: tls %q, want verified policy=dane", dom, got)
		}
	}
	if m := sinks[rxTA].WaitMessages(t, 1); !m[0].TLS {
		t.Errorf("ta.test: the sink got it in clear text")
	}
	if m := sinks[rxEE].WaitMessages(t, 2); !m[0].TLS || !m[1].TLS {
		t.Errorf("ee.test, both.test: the sink got one in clear text")
	}

	for _, tc := range []struct {
		dom  string
		sink int
		enh  smtp.EnhancedCode
		msg  string
	}{
		{"mismatch.test", rxMismatch, smtp.EnhancedCode{4, 7, 5},
			"the certificate of mx.mismatch.test did not verify, and the DANE (TLSA) records of mx.mismatch.test require it"},
		{"plain.test", rxPlain, smtp.EnhancedCode{4, 7, 4},
			"mx.plain.test does not offer STARTTLS, and the DANE (TLSA) records of mx.plain.test require it"},
	} {
		send(tc.dom)
		f := h.connFail()
		e := outcome.As(f.err)
		if e == nil || !e.Temporary || e.Phase != outcome.PhaseTLS || e.Enhanced != tc.enh || !strings.Contains(f.err.Error(), tc.msg) {
			t.Errorf("%s: %v (%+v), want a temporary %v saying %q", tc.dom, f.err, e, tc.enh, tc.msg)
		}
		if got := f.at.TLSInfo.String(); got != "none policy=dane" {
			t.Errorf("%s: record tls %q", tc.dom, got)
		}
		if n, msgs := sinks[tc.sink].ClearMails(), sinks[tc.sink].Messages(); n != 0 || len(msgs) != 0 {
			t.Errorf("%s: the sink got %d MAIL FROM in clear text and %d messages; a DANE deferral sends nothing", tc.dom, n, len(msgs))
		}
	}

	// Without the AD bit the records are not DANE's: opportunistic
	// delivers in clear text to a receiver without STARTTLS.
	send("noad.test")
	r := h.result()
	delivered(t, r)
	if got := r.at.TLSInfo.String(); got != "none policy=opportunistic" {
		t.Errorf("noad.test: tls %q, want none policy=opportunistic", got)
	}
	if n := sinks[rxNoAD].ClearMails(); n != 1 {
		t.Errorf("noad.test: %d MAIL FROM in clear, want 1", n)
	}
}
