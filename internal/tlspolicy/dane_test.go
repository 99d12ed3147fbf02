package tlspolicy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// daneZone is a test resolver: it answers from its records like a
// validating recursive resolver, setting AD unless a name on the way is
// listed insecure, and SERVFAIL (bogus) for names listed so. With chase it
// follows CNAMEs itself; without, it returns the first CNAME only.
type daneZone struct {
	mu       sync.Mutex
	rrs      map[string][]dns.RR
	insecure map[string]bool
	servfail map[string]bool
	chase    bool
}

func newDANEZone(t *testing.T, chase bool, records ...string) *daneZone {
	t.Helper()
	z := &daneZone{rrs: map[string][]dns.RR{}, insecure: map[string]bool{}, servfail: map[string]bool{}, chase: chase}
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("bad test record %q: %v", s, err)
		}
		n := dns.CanonicalName(rr.Header().Name)
		z.rrs[n] = append(z.rrs[n], rr)
	}
	return z
}

func (z *daneZone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	z.mu.Lock()
	defer z.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	secure := true
	for hop := 0; hop < 10; hop++ {
		if z.servfail[name] {
			m.Answer = nil
			m.Rcode = dns.RcodeServerFailure
			_ = w.WriteMsg(m)
			return
		}
		secure = secure && !z.insecure[name]
		rrs, ok := z.rrs[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			break
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if cname == nil || q.Qtype == dns.TypeCNAME {
			break
		}
		m.Answer = append(m.Answer, cname)
		if !z.chase {
			break
		}
		name = dns.CanonicalName(cname.Target)
	}
	m.AuthenticatedData = secure && req.AuthenticatedData
	_ = w.WriteMsg(m)
}

func (z *daneZone) set(f func(z *daneZone)) {
	z.mu.Lock()
	defer z.mu.Unlock()
	f(z)
}

// startDANEDNS serves z over UDP on 127.0.0.1 until the test ends.
func startDANEDNS(t *testing.T, z *daneZone) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: z}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- s.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(); err != nil {
			t.Errorf("dns server shutdown: %v", err)
		}
		<-done
	})
	return pc.LocalAddr().String()
}

// testPKI is a CA, a leaf for mx.dane.test signed by it, a self-signed
// leaf (expired, for another name), and an unrelated CA.
type testPKI struct {
	ca, leaf, self, otherCA *x509.Certificate
	leafKey, selfKey        *ecdsa.PrivateKey
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	now := time.Now()
	mk := func(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, key
	}
	p := &testPKI{}
	var caKey *ecdsa.PrivateKey
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "DANE Test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	p.ca, caKey = mk(caTmpl, nil, nil)
	p.leaf, p.leafKey = mk(&x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mx.dane.test"},
		DNSNames:  []string{"mx.dane.test", "mx.target.test"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, p.ca, caKey)
	p.self, p.selfKey = mk(&x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "self.invalid"},
		DNSNames:  []string{"self.invalid"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour), // expired
	}, nil, nil)
	caTmpl.SerialNumber, caTmpl.Subject.CommonName = big.NewInt(4), "Other CA"
	p.otherCA, _ = mk(caTmpl, nil, nil)
	return p
}

// startTLS serves TLS handshakes with chain on 127.0.0.1 until the test
// ends, one connection at a time, and returns the address.
func startTLS(t *testing.T, key *ecdsa.PrivateKey, chain ...*x509.Certificate) string {
	t.Helper()
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

// handshake connects to addr as mtad would under DANE: Go's verification
// off, VerifyConnection doing all of it, in one handshake.
func handshake(t *testing.T, addr string, recs []TLSA, host string, roots *x509.CertPool) error {
	t.Helper()
	d := tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{
			InsecureSkipVerify: true,
			VerifyConnection:   VerifyConnection(recs, host, roots),
			ServerName:         host,
			MinVersion:         tls.VersionTLS12,
		},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// rec makes a TLSA record for c.
func rec(usage, selector, mt uint8, c *x509.Certificate) TLSA {
	content := c.Raw
	if selector == selectorSPKI {
		content = c.RawSubjectPublicKeyInfo
	}
	data := content
	switch mt {
	case matchSHA256:
		h := sha256.Sum256(content)
		data = h[:]
	case matchSHA512:
		h := sha512.Sum512(content)
		data = h[:]
	}
	return TLSA{Usage: usage, Selector: selector, MatchingType: mt, Data: data}
}

func tlsaRR(name string, r TLSA) string {
	return name + " 300 IN TLSA " + strings.Join([]string{
		itoa(r.Usage), itoa(r.Selector), itoa(r.MatchingType), hex.EncodeToString(r.Data)}, " ")
}

func itoa(b uint8) string { return big.NewInt(int64(b)).String() }

func TestVerifyConnection(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	full := startTLS(t, p.leafKey, p.leaf, p.ca) // leaf and its CA
	bare := startTLS(t, p.leafKey, p.leaf)       // leaf only
	self := startTLS(t, p.selfKey, p.self)       // self-signed, expired
	roots := x509.NewCertPool()
	roots.AddCert(p.ca)
	short := rec(3, 1, 1, p.self)
	short.Data = short.Data[:16]

	for _, tc := range []struct {
		name  string
		addr  string
		host  string
		recs  []TLSA
		roots *x509.CertPool
		fail  string // "" = handshake succeeds
	}{
		{"EE 3 1 1 self-signed expired, any name", self, "mx.dane.test", []TLSA{rec(3, 1, 1, p.self)}, nil, ""},
		{"EE 3 0 1", self, "mx.dane.test", []TLSA{rec(3, 0, 1, p.self)}, nil, ""},
		{"EE 3 0 0", self, "mx.dane.test", []TLSA{rec(3, 0, 0, p.self)}, nil, ""},
		{"EE 3 1 2", full, "other.test", []TLSA{rec(3, 1, 2, p.leaf)}, nil, ""},
		{"EE one of several", full, "mx.dane.test", []TLSA{rec(3, 1, 1, p.self), rec(3, 1, 1, p.leaf)}, nil, ""},
		{"EE mismatch", self, "mx.dane.test", []TLSA{rec(3, 1, 1, p.leaf)}, nil, "dane: mx.dane.test: no usable TLSA record (3 1 1 "},
		{"EE does not match the CA", full, "mx.dane.test", []TLSA{rec(3, 1, 1, p.ca)}, nil, "DANE-EE records match neither"},
		{"TA 2 0 1 CA in chain", full, "mx.dane.test", []TLSA{rec(2, 0, 1, p.ca)}, nil, ""},
		{"TA 2 1 1 CA in chain", full, "mx.dane.test", []TLSA{rec(2, 1, 1, p.ca)}, nil, ""},
		{"TA 2 0 1 wrong name", full, "mx.other.test", []TLSA{rec(2, 0, 1, p.ca)}, nil, "certificate is not valid for mx.other.test"},
		{"TA not in chain", bare, "mx.dane.test", []TLSA{rec(2, 0, 1, p.ca)}, nil, "no DANE-TA record matches a certificate of the chain"},
		{"TA not in chain, found through roots", bare, "mx.dane.test", []TLSA{rec(2, 0, 1, p.ca)}, roots, ""},
		{"TA 2 0 0 full certificate in the record", bare, "mx.dane.test", []TLSA{rec(2, 0, 0, p.ca)}, nil, ""},
		{"TA of another CA", full, "mx.dane.test", []TLSA{rec(2, 0, 1, p.otherCA)}, roots, "dane: mx.dane.test"},
		{"TA does not vouch for a self-signed leaf", self, "self.invalid", []TLSA{rec(2, 0, 1, p.ca)}, nil, "dane:"},
		{"PKIX-TA and PKIX-EE only: unusable, TLS unauthenticated", self, "mx.dane.test",
			[]TLSA{rec(0, 0, 1, p.ca), rec(1, 1, 1, p.leaf)}, nil, ""},
		{"digest of the wrong length is unusable", self, "mx.dane.test", []TLSA{short}, nil, ""},
		{"PKIX-EE matching is ignored", full, "mx.dane.test", []TLSA{rec(1, 1, 1, p.leaf), rec(3, 1, 1, p.self)}, nil, "dane:"},
		{"SHA-512 present: SHA-256 of the same usage and selector ignored", self, "mx.dane.test",
			[]TLSA{rec(3, 1, 1, p.self), rec(3, 1, 2, p.leaf)}, nil, "dane:"},
		{"SHA-512 of another selector leaves SHA-256 usable", self, "mx.dane.test",
			[]TLSA{rec(3, 1, 1, p.self), rec(3, 0, 2, p.leaf)}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := handshake(t, tc.addr, tc.recs, tc.host, tc.roots)
			switch {
			case tc.fail == "" && err != nil:
				t.Fatalf("handshake failed: %v", err)
			case tc.fail != "" && err == nil:
				t.Fatalf("handshake succeeded, want failure %q", tc.fail)
			case tc.fail != "" && !strings.Contains(err.Error(), tc.fail):
				t.Fatalf("error %q does not contain %q", err, tc.fail)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	ee := rec(3, 1, 1, p.leaf)
	ta := rec(2, 0, 1, p.ca)
	unusable := rec(1, 1, 1, p.leaf)
	for _, chase := range []bool{true, false} {
		z := newDANEZone(t, chase,
			"mx.dane.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.mx.dane.test.", ee),
			"v6.dane.test. 300 IN AAAA ::1",
			tlsaRR("_25._tcp.v6.dane.test.", ee),
			// The address is insecure: no TLSA lookup counts.
			"insecure-a.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.insecure-a.test.", ee),
			// The TLSA answer is insecure.
			"insecure-tlsa.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.insecure-tlsa.test.", ee),
			"none.test. 300 IN A 127.0.0.1",
			"noaddr.test. 300 IN TXT \"x\"",
			tlsaRR("_25._tcp.noaddr.test.", ee),
			"bogus.test. 300 IN A 127.0.0.1",
			"bogus-a.test. 300 IN A 127.0.0.1",
			"unusable.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.unusable.test.", unusable),
			// A secure CNAME chain: TLSA at the target wins.
			"mx.alias.test. 300 IN CNAME mx.target.test.",
			"mx.target.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.mx.target.test.", ta),
			tlsaRR("_25._tcp.mx.alias.test.", ee),
			// Target without TLSA: the initial name's are used.
			"mx.alias2.test. 300 IN CNAME mx.target2.test.",
			"mx.target2.test. 300 IN A 127.0.0.1",
			tlsaRR("_25._tcp.mx.alias2.test.", ee),
			// An insecure hop in the chain: not DANE.
			"mx.alias3.test. 300 IN CNAME hop.insecure.test.",
			"hop.insecure.test. 300 IN CNAME mx.target.test.",
			tlsaRR("_25._tcp.mx.alias3.test.", ee),
			// The TLSA RRset itself behind a CNAME (RFC 7671 §7).
			"mx.shared.test. 300 IN A 127.0.0.1",
			"_25._tcp.mx.shared.test. 300 IN CNAME _dane.provider.test.",
			tlsaRR("_dane.provider.test.", ee),
			// A CNAME loop.
			"loop.test. 300 IN CNAME loop2.test.",
			"loop2.test. 300 IN CNAME loop.test.",
		)
		z.set(func(z *daneZone) {
			z.insecure["insecure-a.test."] = true
			z.insecure["_25._tcp.insecure-tlsa.test."] = true
			z.insecure["hop.insecure.test."] = true
			z.servfail["_25._tcp.bogus.test."] = true
			z.servfail["bogus-a.test."] = true
		})
		d := NewDANE([]string{startDANEDNS(t, z)}, 2*time.Second, 25)

		for _, tc := range []struct {
			host   string
			want   []TLSA // nil = not DANE
			base   string
			errMsg string
		}{
			{"mx.dane.test", []TLSA{ee}, "mx.dane.test", ""},
			{"MX.Dane.Test.", []TLSA{ee}, "mx.dane.test", ""},
			{"v6.dane.test", []TLSA{ee}, "v6.dane.test", ""},
			{"insecure-a.test", nil, "", ""},
			{"insecure-tlsa.test", nil, "", ""},
			{"none.test", nil, "", ""},
			{"noaddr.test", nil, "", ""},
			{"nxdomain.test", nil, "", ""},
			{"unusable.test", []TLSA{unusable}, "unusable.test", ""},
			{"mx.alias.test", []TLSA{ta}, "mx.target.test", ""},
			{"mx.alias2.test", []TLSA{ee}, "mx.alias2.test", ""},
			{"mx.alias3.test", nil, "", ""},
			{"mx.shared.test", []TLSA{ee}, "mx.shared.test", ""},
			{"bogus.test", nil, "", "dane: query _25._tcp.bogus.test. TLSA: server 127.0.0.1:"},
			{"bogus-a.test", nil, "", "SERVFAIL"},
			{"loop.test", nil, "", "CNAME chain loops"},
			{"bad..name", nil, "", "is not a host name"},
		} {
			recs, secure, err := d.Lookup(t.Context(), tc.host)
			if tc.errMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errMsg) || recs != nil || secure {
					t.Errorf("chase=%v %s: %v, %v, %v; want error %q", chase, tc.host, recs, secure, err, tc.errMsg)
				}
				continue
			}
			if err != nil {
				t.Errorf("chase=%v %s: %v", chase, tc.host, err)
				continue
			}
			if tc.want == nil {
				if recs != nil || secure {
					t.Errorf("chase=%v %s: %v, %v; want not DANE", chase, tc.host, recs, secure)
				}
				continue
			}
			if !secure || len(recs) != len(tc.want) {
				t.Errorf("chase=%v %s: %v, %v; want %v", chase, tc.host, recs, secure, tc.want)
				continue
			}
			for i, r := range recs {
				w := tc.want[i]
				if r.Usage != w.Usage || r.Selector != w.Selector || r.MatchingType != w.MatchingType ||
					hex.EncodeToString(r.Data) != hex.EncodeToString(w.Data) || r.base != tc.base {
					t.Errorf("chase=%v %s: record %d = %+v, want %+v at %s", chase, tc.host, i, r, w, tc.base)
				}
			}
		}
	}
}

// TestLookupThenHandshake goes the whole way: TLSA records from the test
// resolver decide the handshake with a loopback TLS server. Through a
// CNAME, the leaf carries only the target's name, which DANE-TA accepts
// as the TLSA base domain (RFC 7672 §3.2.2).
func TestLookupThenHandshake(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	z := newDANEZone(t, true,
		"mx.good.test. 300 IN A 127.0.0.1",
		tlsaRR("_25._tcp.mx.good.test.", rec(3, 1, 1, p.leaf)),
		"mx.bad.test. 300 IN A 127.0.0.1",
		tlsaRR("_25._tcp.mx.bad.test.", rec(3, 1, 1, p.self)),
		"mx.alias.test. 300 IN CNAME mx.target.test.",
		"mx.target.test. 300 IN A 127.0.0.1",
		tlsaRR("_25._tcp.mx.target.test.", rec(2, 1, 1, p.ca)),
	)
	d := NewDANE([]string{startDANEDNS(t, z)}, 2*time.Second, 0)
	srv := startTLS(t, p.leafKey, p.leaf, p.ca)
	for host, wantErr := range map[string]bool{"mx.good.test": false, "mx.bad.test": true, "mx.alias.test": false} {
		recs, secure, err := d.Lookup(t.Context(), host)
		if err != nil || !secure {
			t.Fatalf("%s: %v, %v, %v", host, recs, secure, err)
		}
		err = handshake(t, srv, recs, host, nil)
		if (err != nil) != wantErr {
			t.Errorf("%s: handshake error %v, want error %v", host, err, wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "dane:") {
			t.Errorf("%s: error %q does not name DANE", host, err)
		}
	}
}

func TestLookupWithoutServers(t *testing.T) {
	t.Parallel()
	_, _, err := NewDANE(nil, time.Second, 25).Lookup(t.Context(), "mx.dane.test")
	if err == nil || !strings.Contains(err.Error(), "no DNSSEC-validating resolver") {
		t.Fatalf("Lookup without servers: %v", err)
	}
}

// FuzzVerifyTLSA checks VerifyConnection against one record of any
// content and a self-signed leaf: it accepts exactly when the record is
// unusable (unauthenticated TLS) or is a DANE-EE record naming the leaf.
func FuzzVerifyTLSA(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		f.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	good := rec(3, 1, 1, leaf)
	f.Add(uint8(3), uint8(1), uint8(1), good.Data)
	f.Add(uint8(2), uint8(0), uint8(0), []byte{0x30, 0x03})
	f.Add(uint8(3), uint8(0), uint8(2), make([]byte, 64))
	f.Add(uint8(0), uint8(1), uint8(1), good.Data)
	f.Fuzz(func(t *testing.T, u, s, m uint8, data []byte) {
		r := TLSA{Usage: u, Selector: s, MatchingType: m, Data: data}
		err := VerifyConnection([]TLSA{r}, "mx.fuzz.test", nil)(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
		want := !r.usable() || (r.Usage == usageDANEEE && r.matches(leaf))
		if (err == nil) != want {
			t.Fatalf("record %d %d %d %x: error %v, want accepted=%v", u, s, m, data, err, want)
		}
	})
}
