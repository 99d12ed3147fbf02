package dkim

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// CheckDNS looks up <selector>._domainkey.<domain> TXT for every key with
// DNSCheck set, through servers (host:port; empty = /etc/resolv.conf's),
// and returns an error naming the entry, its file and the record when the
// record is missing, is not one DKIM key record, or publishes another
// public key. Each lookup is bounded by timeout; the whole by ctx.
func CheckDNS(ctx context.Context, keys *Keys, servers []string, timeout time.Duration) error {
	var todo []*Key
	for _, k := range keys.All() {
		if k.DNSCheck {
			todo = append(todo, k)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return fmt.Errorf("dkim dns_check: no dns.servers and /etc/resolv.conf: %w", err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
	}
	var errs []error
	for _, k := range todo {
		name := k.Selector + "._domainkey." + k.Domain
		txts, err := lookupTXT(ctx, servers, timeout, name)
		if err == nil {
			err = matchRecord(k, txts)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.key_file %q: dns_check of %s TXT: %w", k.configName, k.File, name, err))
		}
	}
	return errors.Join(errs...)
}

// lookupTXT asks each server in turn (over TCP when the answer is
// truncated) until one answers; each TXT record's strings are joined, as
// RFC 6376 3.6.2.2 says.
func lookupTXT(ctx context.Context, servers []string, timeout time.Duration, name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	m.SetEdns0(4096, false)
	var lastErr error
	for _, srv := range servers {
		c := &dns.Client{Timeout: timeout}
		resp, _, err := c.ExchangeContext(ctx, m, srv)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			lastErr = fmt.Errorf("server %s: %w", srv, err)
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, errors.New("no such name (NXDOMAIN)")
		default:
			lastErr = fmt.Errorf("server %s: %s", srv, dns.RcodeToString[resp.Rcode])
			continue
		}
		var out []string
		for _, rr := range resp.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(t.Txt, ""))
			}
		}
		return out, nil
	}
	return nil, lastErr
}

// matchRecord checks that the one DKIM key record among txts publishes k's
// public half.
func matchRecord(k *Key, txts []string) error {
	if len(txts) == 0 {
		return errors.New("no TXT record")
	}
	if len(txts) > 1 {
		return fmt.Errorf("%d TXT records (RFC 6376 3.6.2.2: the result is undefined)", len(txts))
	}
	tags := map[string]string{}
	for _, part := range strings.Split(txts[0], ";") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(name)] = strings.Join(strings.Fields(value), "")
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return fmt.Errorf("v=%s, want DKIM1", v)
	}
	kt := tags["k"]
	if kt == "" {
		kt = "rsa"
	}
	if want := strings.TrimSuffix(k.Algo, "-sha256"); kt != want {
		return fmt.Errorf("k=%s, but %s is a %s key", kt, k.File, want)
	}
	p, ok := tags["p"]
	switch {
	case !ok:
		return errors.New("no p= tag")
	case p == "":
		return errors.New("p= is empty: the key is revoked")
	}
	got, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return fmt.Errorf("p= is not base64: %v", err)
	}
	if !bytes.Equal(got, k.publicDER) && !sameRSA(k, got) {
		return fmt.Errorf("p= publishes another key than the public half of %s", k.File)
	}
	return nil
}

// TXTRecord returns the TXT record that publishes k ("v=DKIM1; k=...;
// p=..."), as an operator would put in the zone.
func (k *Key) TXTRecord() string {
	return "v=DKIM1; k=" + strings.TrimSuffix(k.Algo, "-sha256") + "; p=" + base64.StdEncoding.EncodeToString(k.publicDER)
}

// sameRSA accepts an RSA p= written as a bare RSAPublicKey (PKCS#1), which
// RFC 6376 erratum 3017 allows beside SubjectPublicKeyInfo.
func sameRSA(k *Key, p []byte) bool {
	own, ok := k.Public().(*rsa.PublicKey)
	if !ok {
		return false
	}
	pub, err := x509.ParsePKCS1PublicKey(p)
	return err == nil && own.Equal(pub)
}
