package config

import (
	"fmt"
	"strings"
	"time"
)

// DKIMKey is one entry of the dkim: list: a private key that signs the mail
// whose From-header domain matches Domain (issue 10, point 1). Several
// entries for one domain give a message several signatures (RSA and
// Ed25519 side by side, RFC 8463). internal/dkim reads the key files; this
// package only checks the shape.
type DKIMKey struct {
	// Domain is the From-header domain signed for, and the d= of the
	// signature. "*.example.com" matches every name below example.com (not
	// example.com itself: list it on its own) and signs with
	// d=example.com, which DMARC's relaxed alignment accepts.
	Domain string `mapstructure:"domain"`
	// Selector is the s= of the signature: the key is published at
	// <selector>._domainkey.<domain>.
	Selector string `mapstructure:"selector"`
	// KeyFile is a PEM private key: RSA (1024 to 4096 bits; PKCS#1 or
	// PKCS#8) or Ed25519 (PKCS#8), readable by its owner only.
	KeyFile string `mapstructure:"key_file"`
	// Headers are the header fields to sign, in h= order, as written
	// (list a name twice to oversign it); must include From. Empty means
	// internal/dkim's default list.
	Headers []string `mapstructure:"headers"`
	// Canonicalization is header/body: simple or relaxed each.
	Canonicalization string `mapstructure:"canonicalization"`
	// Expiry sets x= to signing time plus Expiry; 0 = no x=.
	Expiry time.Duration `mapstructure:"expiry"`
	// DNSCheck makes start-up (and reload) look up the selector's TXT
	// record through dns.servers and refuse a key whose public half it
	// does not publish.
	DNSCheck bool `mapstructure:"dns_check"`
}

// DefaultDKIMCanonicalization is the canonicalization of an entry that
// names none: relaxed survives the header refolding and trailing-space
// changes relays make.
const DefaultDKIMCanonicalization = "relaxed/relaxed"

// normalizeDKIM lower-cases domains and fills the default canonicalization.
func (c *Config) normalizeDKIM() {
	if len(c.DKIM) == 0 {
		c.DKIM = nil
	}
	for i := range c.DKIM {
		k := &c.DKIM[i]
		k.Domain = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(k.Domain)), ".")
		k.Selector = strings.ToLower(strings.TrimSpace(k.Selector))
		if k.Canonicalization == "" {
			k.Canonicalization = DefaultDKIMCanonicalization
		}
	}
}

func (c *Config) validateDKIM(v *validator) {
	seen := map[string]int{}
	for i, k := range c.DKIM {
		key := fmt.Sprintf("dkim[%d]", i)
		if base, wild := strings.CutPrefix(k.Domain, "*."); !validDomain(base) || strings.Contains(base, "*") {
			v.bad(key+".domain", "%q is neither a domain name nor *.domain", k.Domain)
		} else if wild && !strings.Contains(base, ".") {
			v.bad(key+".domain", "%q would sign for every name under a top-level domain", k.Domain)
		}
		if !validDomain(k.Selector) || strings.HasSuffix(k.Selector, ".") {
			v.bad(key+".selector", "%q is not a DNS label sequence", k.Selector)
		}
		id := k.Domain + " " + k.Selector
		if j, dup := seen[id]; dup {
			v.bad(key+".selector", "domain %q and selector %q are already dkim[%d]'s", k.Domain, k.Selector, j)
		} else {
			seen[id] = i
		}
		if strings.TrimSpace(k.KeyFile) == "" {
			v.bad(key+".key_file", "must not be empty")
		}
		if len(k.Headers) > 0 {
			from := false
			for j, h := range k.Headers {
				if !validFieldName(h) {
					v.bad(fmt.Sprintf("%s.headers[%d]", key, j), "%q is not a header field name", h)
				}
				from = from || strings.EqualFold(h, "From")
			}
			if !from {
				v.bad(key+".headers", "must include From (RFC 6376 5.4)")
			}
		}
		v.oneOf(key+".canonicalization", k.Canonicalization,
			"relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
		v.nonNegative(key+".expiry", k.Expiry)
		if k.Expiry > 0 && k.Expiry < time.Hour {
			v.bad(key+".expiry", "%s is under an hour: mail delayed by a retry would arrive with an expired signature", k.Expiry)
		}
	}
}

// validFieldName accepts an RFC 5322 field name: printable ASCII but ':'.
func validFieldName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == ':' {
			return false
		}
	}
	return true
}
