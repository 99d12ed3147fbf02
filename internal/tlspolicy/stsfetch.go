package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/mx"
)

// STS finds, caches and refreshes domains' MTA-STS policies (RFC 8461).
//
// A domain's policy is looked up before its MX hosts are tried: a valid
// cached one (memory, else the disk cache) is used at once, and when its
// TXT id was last checked longer than STSOptions.Recheck ago, or its
// max_age nears its end, a background refresh checks the TXT record and
// fetches the policy again if the id changed — the delivery never waits
// for that. Without a valid cached policy the lookup waits for the TXT
// query and the HTTPS fetch, at most FetchTimeout; when either fails there
// is no policy (RFC 8461 §5.1: deliver as if the domain had none).
//
// The disk cache is one JSON file per domain under CacheDir (the domain,
// the policy id, when it was fetched and the policy's text), written to a
// temporary file, fsync'd and renamed into place, so a crash leaves the old
// file or the new one. A restart reads it instead of fetching.
//
// STS must never follow an HTTP redirect (RFC 8461 §3.3), never connect
// to a prohibited address (dialPolicyHost), never read more
// than 64 KiB of a policy, and never outlive Close: its background
// refreshes are owned by its context and WaitGroup, at most refreshWorkers
// at a time.
type STS struct {
	opts   STSOptions
	client *http.Client
	tr     *http.Transport
	x      *mx.Exchanger // dns.servers, as the resolver asks them

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{} // one token per background refresh running

	mu         sync.Mutex
	mem        map[string]*stsEntry // domain → policy known
	none       map[string]time.Time // domain → until when "no policy" is believed
	refreshing map[string]bool
	closed     bool
}

// STSOptions configure an STS.
type STSOptions struct {
	// Servers are the DNS servers ("host:port") asked for the TXT record,
	// in turn: dns.servers; empty = those of /etc/resolv.conf.
	Servers []string
	// DNSTimeout bounds each query (default 5s).
	DNSTimeout time.Duration
	// Exchanger, when set, asks the TXT and address questions in place
	// of one made from Servers and DNSTimeout (both then unused). The
	// daemon passes the resolver's (mx.Resolver.Exchanger), so a DNS
	// server the MX lookups found dead is not waited on again here.
	Exchanger *mx.Exchanger
	// CacheDir holds the policy files; created if missing. "" keeps
	// policies in memory only.
	CacheDir string
	// Roots verify the policy server's certificate (nil: the system's).
	Roots *x509.CertPool
	// Dial connects to an address of the policy server ("ip:port",
	// found through Servers and checked as below); nil dials it. Tests
	// point it at a loopback HTTPS server.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AllowLoopback and AllowedNetworks lift the refusal of prohibited
	// addresses for the policy server exactly as they do for MX hosts
	// (delivery.allow_loopback_mx, delivery.allowed_networks; see
	// mx.Refusal).
	AllowLoopback   bool
	AllowedNetworks []netip.Prefix
	// FetchTimeout bounds the TXT lookup plus the HTTPS fetch a delivery
	// waits for (default 10s).
	FetchTimeout time.Duration
	// Recheck is how long a cached policy is used before its TXT id is
	// checked again in the background (default 1h); NoPolicyTTL how
	// long a domain without a policy is believed to have none (default
	// 10m).
	Recheck     time.Duration
	NoPolicyTTL time.Duration
	// Now is the clock (nil: time.Now); Logger gets fetch failures.
	Now    func() time.Time
	Logger *zap.Logger
}

// stsEntry is a policy known for a domain.
type stsEntry struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
	Text    string    `json:"policy"`

	policy  *STSPolicy
	checked time.Time // last time the TXT id was compared
}

func (e *stsEntry) expires() time.Time { return e.Fetched.Add(e.policy.MaxAge) }

const (
	refreshWorkers = 4
	// maxNoPolicy bounds the negative cache; it is emptied when full
	// (forgetting costs one TXT query per domain).
	maxNoPolicy = 100000
	// maxMem bounds the policies held in memory (each up to 64 KiB of
	// text); the disk cache holds them all.
	maxMem = 10000
	// failedTTL is how long a failed TXT lookup or policy fetch of a
	// domain with no cached policy means "no policy" before it is tried
	// again.
	failedTTL = 5 * time.Minute
)

// NewSTS builds an STS and its cache directory.
func NewSTS(o STSOptions) (*STS, error) {
	if len(o.Servers) == 0 && o.Exchanger == nil {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("tlspolicy: reading DNS servers: %w", err)
		}
		for _, srv := range cfg.Servers {
			o.Servers = append(o.Servers, net.JoinHostPort(srv, cfg.Port))
		}
		if len(o.Servers) == 0 {
			return nil, errors.New("tlspolicy: no DNS server given or in /etc/resolv.conf")
		}
	}
	if o.DNSTimeout <= 0 {
		o.DNSTimeout = 5 * time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 10 * time.Second
	}
	if o.Recheck <= 0 {
		o.Recheck = time.Hour
	}
	if o.NoPolicyTTL <= 0 {
		o.NoPolicyTTL = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.CacheDir != "" {
		if err := os.MkdirAll(o.CacheDir, 0o750); err != nil {
			return nil, fmt.Errorf("tlspolicy: mta-sts cache: %w", err)
		}
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{Timeout: o.FetchTimeout}).DialContext
	}
	s := &STS{
		opts: o,
		tr: &http.Transport{
			// TLS is verified for the URL's host name whatever address
			// dialPolicyHost connects to.
			TLSClientConfig: &tls.Config{RootCAs: o.Roots, MinVersion: tls.VersionTLS12},
			// No proxy from the environment, and no idle connections
			// left behind: one fetch per domain per max_age or id change.
			Proxy:                  nil,
			DisableKeepAlives:      true,
			TLSHandshakeTimeout:    o.FetchTimeout,
			ResponseHeaderTimeout:  o.FetchTimeout,
			MaxResponseHeaderBytes: 16 << 10,
		},
		x:          o.Exchanger,
		sem:        make(chan struct{}, refreshWorkers),
		mem:        map[string]*stsEntry{},
		none:       map[string]time.Time{},
		refreshing: map[string]bool{},
	}
	if s.x == nil {
		s.x = mx.NewExchanger(o.Servers, o.DNSTimeout)
	}
	s.tr.DialContext = s.dialPolicyHost
	s.client = &http.Client{
		Transport: s.tr,
		Timeout:   o.FetchTimeout,
		// RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed".
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Close stops the background refreshes and waits for them.
func (s *STS) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.tr.CloseIdleConnections()
}

// Lookup returns domain's MTA-STS policy, nil when it has none (or none
// could be had: see STS). ctx bounds the wait further than FetchTimeout.
func (s *STS) Lookup(ctx context.Context, domain string) *STSPolicy {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validPattern(domain) || strings.HasPrefix(domain, "*.") {
		return nil
	}
	now := s.opts.Now()
	e := s.cached(domain, now)
	if e != nil && now.Before(e.expires()) {
		if now.Sub(e.checked) >= s.opts.Recheck || e.expires().Sub(now) < e.policy.MaxAge/10 {
			s.refreshAsync(domain)
		}
		return e.policy
	}
	s.mu.Lock()
	until, negative := s.none[domain]
	s.mu.Unlock()
	if negative && now.Before(until) {
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, s.opts.FetchTimeout)
	defer cancel()
	ne, err := s.refresh(fctx, domain, e)
	if err != nil {
		s.opts.Logger.Debug("mta-sts: no policy", zap.String("domain", domain), zap.Error(err))
		return nil
	}
	return ne.policy
}

// cached returns the entry in memory, else the disk cache's (kept in
// memory from then on); nil when neither has one.
func (s *STS) cached(domain string, now time.Time) *stsEntry {
	s.mu.Lock()
	e := s.mem[domain]
	s.mu.Unlock()
	if e != nil || s.opts.CacheDir == "" {
		return e
	}
	e, err := s.readFile(domain)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.opts.Logger.Warn("mta-sts: unusable cache file", zap.String("domain", domain), zap.Error(err))
		}
		return nil
	}
	// A policy read at start is checked against its TXT record at the
	// next Recheck, not at once: that is what keeps a restart from
	// refetching every policy.
	e.checked = now
	s.mu.Lock()
	if cur := s.mem[domain]; cur != nil {
		e = cur
	} else {
		s.mem[domain] = e
	}
	s.mu.Unlock()
	return e
}

// refresh looks the TXT record up and, when its id differs from old's or
// old is near its end, fetches the policy; it stores and returns what is
// then known. An error leaves what was cached alone.
func (s *STS) refresh(ctx context.Context, domain string, old *stsEntry) (*stsEntry, error) {
	now := s.opts.Now()
	id, err := s.txtID(ctx, domain)
	if err != nil {
		if old == nil {
			ttl := s.opts.NoPolicyTTL
			if !errors.Is(err, errNoSTSRecord) {
				// A lookup that failed (a timeout, SERVFAIL) is not
				// asked again by every connection meanwhile either.
				ttl = min(ttl, failedTTL)
			}
			s.noPolicy(domain, now.Add(ttl))
		}
		if old != nil {
			// RFC 8461 §5.1: a TXT record that vanished does not end
			// a cached policy; its max_age does.
			s.touch(old, now)
		}
		return nil, err
	}
	if old != nil && old.ID == id && old.expires().Sub(now) >= old.policy.MaxAge/10 {
		s.touch(old, now)
		return old, nil
	}
	text, p, err := s.fetch(ctx, domain)
	if err != nil {
		if old != nil {
			s.touch(old, now)
		} else {
			// A policy host that is down or answers badly costs each
			// connection up to FetchTimeout: for failedTTL, none does.
			s.noPolicy(domain, now.Add(min(s.opts.NoPolicyTTL, failedTTL)))
		}
		return nil, err
	}
	e := &stsEntry{Domain: domain, ID: id, Fetched: now, Text: text, policy: p, checked: now}
	s.mu.Lock()
	if len(s.mem) >= maxMem {
		// Bounded: the expired go first; a policy dropped from memory
		// is read back from the disk cache when next needed.
		for d, x := range s.mem {
			if !now.Before(x.expires()) || len(s.mem) >= maxMem {
				delete(s.mem, d)
			}
			if len(s.mem) < maxMem*3/4 {
				break
			}
		}
	}
	s.mem[domain] = e
	delete(s.none, domain)
	s.mu.Unlock()
	if err := s.writeFile(e); err != nil {
		s.opts.Logger.Warn("mta-sts: writing the cache", zap.String("domain", domain), zap.Error(err))
	}
	return e, nil
}

// noPolicy remembers that domain has no usable policy until until.
func (s *STS) noPolicy(domain string, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.none) >= maxNoPolicy {
		clear(s.none)
	}
	s.none[domain] = until
}

func (s *STS) touch(e *stsEntry, now time.Time) {
	s.mu.Lock()
	e.checked = now
	s.mu.Unlock()
}

// refreshAsync refreshes domain's policy in the background, once at a
// time per domain and at most refreshWorkers at once; when all are busy
// it does nothing (the next Lookup asks again).
func (s *STS) refreshAsync(domain string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.refreshing[domain] {
		return
	}
	select {
	case s.sem <- struct{}{}:
	default:
		return
	}
	s.refreshing[domain] = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			<-s.sem
			s.mu.Lock()
			delete(s.refreshing, domain)
			s.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.FetchTimeout)
		defer cancel()
		s.mu.Lock()
		old := s.mem[domain]
		s.mu.Unlock()
		if _, err := s.refresh(ctx, domain, old); err != nil && s.ctx.Err() == nil {
			s.opts.Logger.Info("mta-sts: refresh failed; the cached policy stays", zap.String("domain", domain), zap.Error(err))
		}
	}()
}

// txtID asks the servers in turn (mx.Exchanger) for _mta-sts.<domain>
// TXT and parses it.
func (s *STS) txtID(ctx context.Context, domain string) (string, error) {
	resp, err := s.x.Exchange(ctx, "_mta-sts."+domain, dns.TypeTXT, nil)
	if err != nil {
		return "", fmt.Errorf("mta-sts TXT: %w", err)
	}
	if resp.Rcode == dns.RcodeNameError {
		return "", errNoSTSRecord
	}
	var txts []string
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			txts = append(txts, strings.Join(t.Txt, ""))
		}
	}
	return ParseSTSRecord(txts)
}

// maxPolicyAddrs bounds the addresses of a policy host tried in turn.
const maxPolicyAddrs = 8

// dialPolicyHost is the HTTPS transport's dialer. The policy host
// mta-sts.<domain> is named by the domain's owner as freely as its MX
// hosts are, so it gets their check: its addresses are found through
// Servers (as the MX hosts' are) and a prohibited one (private, loopback,
// reserved, ... : mx.Refusal) is never dialled, lest a domain turn mtad
// into a client of the sender's own network. The check is on the very
// addresses dialled, so no second lookup can answer otherwise.
func (s *STS) dialPolicyHost(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: dial %q: %w", addr, err)
	}
	var addrs []netip.Addr
	if a, perr := netip.ParseAddr(host); perr == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = s.lookupAddrs(ctx, host); err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("mta-sts: %s has no address", host)
	}
	var errs []error
	for i, a := range addrs {
		if i == maxPolicyAddrs {
			break
		}
		if why := mx.Refusal(a, s.opts.AllowLoopback, s.opts.AllowedNetworks); why != "" {
			errs = append(errs, fmt.Errorf("prohibited IP: %s", why))
			continue
		}
		c, err := s.opts.Dial(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("mta-sts: connecting to %s: %w", host, errors.Join(errs...))
}

// lookupAddrs asks the servers in turn (mx.Exchanger) for host's A and
// AAAA records.
func (s *STS) lookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := s.x.Exchange(ctx, host, qtype, nil)
		if err != nil {
			if qtype == dns.TypeAAAA && len(out) > 0 {
				// The A records answered: a resolver or server that
				// fails AAAA queries must not cost the domain its
				// policy (an MX lookup tolerates the same).
				break
			}
			return nil, fmt.Errorf("mta-sts: looking up %s: %w", host, err)
		}
		// The resolver follows CNAMEs; the addresses at the chain's end
		// are what it answers.
		for _, rr := range resp.Answer {
			switch r := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(r.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(r.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out, nil
}

// fetch gets https://mta-sts.<domain>/.well-known/mta-sts.txt.
func (s *STS) fetch(ctx context.Context, domain string) (string, *STSPolicy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return "", nil, fmt.Errorf("mta-sts fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nil, fmt.Errorf("mta-sts fetch %s: HTTP %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return "", nil, fmt.Errorf("mta-sts fetch %s: Content-Type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicySize+1))
	if err != nil {
		return "", nil, fmt.Errorf("mta-sts fetch %s: %w", url, err)
	}
	p, err := ParseSTSPolicy(b)
	if err != nil {
		return "", nil, err
	}
	return string(b), p, nil
}

func (s *STS) path(domain string) string {
	return filepath.Join(s.opts.CacheDir, domain+".json")
}

func (s *STS) readFile(domain string) (*stsEntry, error) {
	b, err := os.ReadFile(s.path(domain))
	if err != nil {
		return nil, err
	}
	var e stsEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(domain), err)
	}
	if e.Domain != domain {
		return nil, fmt.Errorf("%s: holds domain %q", s.path(domain), e.Domain)
	}
	if e.policy, err = ParseSTSPolicy([]byte(e.Text)); err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(domain), err)
	}
	return &e, nil
}

// writeFile stores e atomically: a temporary file, fsync, rename, and an
// fsync of the directory so the rename itself survives a crash.
func (s *STS) writeFile(e *stsEntry) error {
	if s.opts.CacheDir == "" {
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.opts.CacheDir, ".tmp-"+e.Domain+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(e.Domain))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(s.opts.CacheDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
