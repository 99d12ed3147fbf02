package tlspolicy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

const waitLimit = 10 * time.Second // a hang guard, never a timing assertion

// policyServer is a loopback HTTPS server with a certificate from ca for
// mta-sts.<domain> of each domain in policies, serving the policy text of
// the domain the request's Host names, and counting fetches.
type policyServer struct {
	srv     *httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	text    map[string]string // by domain
	block   chan struct{}     // when set, requests wait on it
}

func startPolicyServer(t *testing.T, ca *loopbacktest.CA, policies map[string]string) *policyServer {
	t.Helper()
	ps := &policyServer{text: policies}
	var names []string
	for d := range policies {
		names = append(names, "mta-sts."+d)
	}
	ps.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.fetches.Add(1)
		ps.mu.Lock()
		block := ps.block
		text, ok := ps.text[r.Host[len("mta-sts."):]]
		ps.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
			}
			return
		}
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte(text))
	}))
	ps.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, names...)}}
	ps.srv.StartTLS()
	t.Cleanup(ps.srv.Close)
	return ps
}

func (ps *policyServer) set(domain, text string) {
	ps.mu.Lock()
	ps.text[domain] = text
	ps.mu.Unlock()
}

// dial is the STS dialer seam: every policy host is this server.
func (ps *policyServer) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, ps.srv.Listener.Addr().String())
}

// newSTS builds an STS asking dns, where each policy domain's
// mta-sts.<domain> gets the address 127.0.0.1 (loopback allowed, as
// delivery.allow_loopback_mx does in tests).
func newSTS(t *testing.T, dns *loopbacktest.DNS, dir string, ps *policyServer, ca *loopbacktest.CA, edit func(*STSOptions)) *STS {
	t.Helper()
	ps.mu.Lock()
	for d := range ps.text {
		dns.Replace(t, "mta-sts."+d+". 60 IN A 127.0.0.1")
	}
	ps.mu.Unlock()
	o := STSOptions{Servers: []string{dns.Addr}, DNSTimeout: 2 * time.Second, CacheDir: dir, Roots: ca.Pool(),
		Dial: ps.dial, FetchTimeout: 5 * time.Second, AllowLoopback: true}
	if edit != nil {
		edit(&o)
	}
	s, err := NewSTS(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const enforceA = "version: STSv1\nmode: enforce\nmx: mx1.a.test\nmax_age: 86400\n"

// A policy is fetched once, kept on disk, and a new STS on the same
// directory (a restart) uses it without fetching.
func TestSTSFetchAndDiskCache(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	dns := loopbacktest.StartDNS(t)
	dns.Add(t, `_mta-sts.a.test. 60 IN TXT "v=STSv1; id=1"`, `_mta-sts.none.test. 60 IN TXT "v=spf1 -all"`)
	ps := startPolicyServer(t, ca, map[string]string{"a.test": enforceA})
	dir := t.TempDir()

	s := newSTS(t, dns, dir, ps, ca, nil)
	p := s.Lookup(context.Background(), "A.test.")
	if p == nil || p.Mode != STSEnforce || !p.Matches("mx1.a.test") || p.Matches("mx2.a.test") {
		t.Fatalf("policy %+v", p)
	}
	if p2 := s.Lookup(context.Background(), "a.test"); p2 != p {
		t.Error("second lookup did not use the memory cache")
	}
	if s.Lookup(context.Background(), "none.test") != nil || s.Lookup(context.Background(), "nx.test") != nil {
		t.Error("a policy for a domain without an STSv1 record")
	}
	s.Close()
	if n := ps.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.test.json")); err != nil {
		t.Fatalf("cache file: %v", err)
	}

	s2 := newSTS(t, dns, dir, ps, ca, nil)
	defer s2.Close()
	if p := s2.Lookup(context.Background(), "a.test"); p == nil || p.Mode != STSEnforce {
		t.Fatalf("after restart: %+v", p)
	}
	if n := ps.fetches.Load(); n != 1 {
		t.Errorf("after restart: %d fetches, want still 1", n)
	}
}

// A cached policy whose TXT id changed is fetched again in the
// background; the lookup that noticed answers with the cached one.
func TestSTSRefreshOnNewID(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	dns := loopbacktest.StartDNS(t)
	dns.Add(t, `_mta-sts.a.test. 60 IN TXT "v=STSv1; id=1"`)
	ps := startPolicyServer(t, ca, map[string]string{"a.test": enforceA})
	s := newSTS(t, dns, t.TempDir(), ps, ca, func(o *STSOptions) { o.Recheck = time.Nanosecond })
	defer s.Close()
	if p := s.Lookup(context.Background(), "a.test"); p == nil || p.Mode != STSEnforce {
		t.Fatalf("policy %+v", p)
	}
	ps.set("a.test", "version: STSv1\nmode: testing\nmx: mx1.a.test\nmax_age: 86400\n")
	s.Lookup(context.Background(), "a.test") // same id: the refresh fetches nothing
	dns.Replace(t, `_mta-sts.a.test. 60 IN TXT "v=STSv1; id=2"`)
	deadline := time.Now().Add(waitLimit)
	for {
		if p := s.Lookup(context.Background(), "a.test"); p.Mode == STSTesting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy not refreshed after the id changed; %d fetches", ps.fetches.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := ps.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// A policy server that does not answer costs a delivery at most
// FetchTimeout, and then there is no policy; with a cached policy the
// lookup does not wait at all (the refresh runs in the background, and
// Close ends it).
func TestSTSSlowServerBounded(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	dns := loopbacktest.StartDNS(t)
	dns.Add(t, `_mta-sts.a.test. 60 IN TXT "v=STSv1; id=1"`, `_mta-sts.slow.test. 60 IN TXT "v=STSv1; id=1"`)
	ps := startPolicyServer(t, ca, map[string]string{"a.test": enforceA, "slow.test": enforceA})
	s := newSTS(t, dns, t.TempDir(), ps, ca, func(o *STSOptions) {
		o.FetchTimeout = 300 * time.Millisecond
		o.Recheck = time.Nanosecond
	})
	if s.Lookup(context.Background(), "a.test") == nil {
		t.Fatal("no policy")
	}
	block := make(chan struct{})
	ps.mu.Lock()
	ps.block = block
	ps.mu.Unlock()
	if p := s.Lookup(context.Background(), "slow.test"); p != nil {
		t.Errorf("policy %+v from a server that never answered", p)
	}
	dns.Replace(t, `_mta-sts.a.test. 60 IN TXT "v=STSv1; id=2"`)
	if p := s.Lookup(context.Background(), "a.test"); p == nil || p.Mode != STSEnforce {
		t.Errorf("cached policy not used while the server hangs: %+v", p)
	}
	s.Close() // waits for the background refresh stuck on the server
	close(block)
}
