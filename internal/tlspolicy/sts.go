package tlspolicy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MTA-STS (RFC 8461) as text: the _mta-sts TXT record and the policy file.
// Both come from outside (a domain's DNS and web server), so the parsers
// are strict about what they take and bounded in what they read, and each
// has a fuzz target.

// STS modes (RFC 8461 §3.2).
const (
	STSEnforce = "enforce"
	STSTesting = "testing"
	STSNone    = "none"
)

// maxSTSAge is the largest max_age a policy may give (RFC 8461 §3.2: one
// year, 31557600 seconds).
const maxSTSAge = 31557600 * time.Second

// maxPolicySize bounds the policy file read over HTTPS: the RFC names no
// limit, real policies are a few hundred bytes, and postfix-mta-sts-resolver
// and go-mtasts cap theirs at 64 KiB too.
const maxPolicySize = 64 << 10

// STSPolicy is a parsed MTA-STS policy.
type STSPolicy struct {
	Mode   string        // STSEnforce, STSTesting or STSNone
	MX     []string      // patterns, lower case: "mx.example.com" or "*.example.com"
	MaxAge time.Duration // how long the policy may be cached
}

// ParseSTSPolicy parses a policy file (RFC 8461 §3.2): "key: value" lines
// ending in CRLF or LF; version must be STSv1, mode one of enforce, testing
// and none, max_age a whole number of seconds up to 31557600, and mx given
// at least once unless the mode is none. Unknown keys are ignored, as the
// RFC says; a key given twice (but mx) is an error.
func ParseSTSPolicy(b []byte) (*STSPolicy, error) {
	if len(b) > maxPolicySize {
		return nil, fmt.Errorf("mta-sts policy: %d bytes, more than %d", len(b), maxPolicySize)
	}
	p := &STSPolicy{}
	seen := map[string]bool{}
	var version string
	hasAge := false
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy: line %d has no \":\"", n+1)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k != "mx" {
			if seen[k] {
				return nil, fmt.Errorf("mta-sts policy: line %d: %q given twice", n+1, k)
			}
			seen[k] = true
		}
		switch k {
		case "version":
			version = v
		case "mode":
			switch v {
			case STSEnforce, STSTesting, STSNone:
				p.Mode = v
			default:
				return nil, fmt.Errorf("mta-sts policy: line %d: mode %q is not enforce, testing or none", n+1, v)
			}
		case "max_age":
			if v == "" || len(v) > 10 || strings.TrimLeft(v, "0123456789") != "" {
				return nil, fmt.Errorf("mta-sts policy: line %d: max_age %q is not a number of seconds", n+1, v)
			}
			secs, _ := strconv.ParseInt(v, 10, 64)
			if time.Duration(secs)*time.Second > maxSTSAge {
				return nil, fmt.Errorf("mta-sts policy: line %d: max_age %s is more than %d", n+1, v, int64(maxSTSAge/time.Second))
			}
			p.MaxAge, hasAge = time.Duration(secs)*time.Second, true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("mta-sts policy: line %d: mx %q is not a host name or \"*.\" pattern", n+1, v)
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case version != "STSv1":
		return nil, fmt.Errorf("mta-sts policy: version %q, want STSv1", version)
	case p.Mode == "":
		return nil, errors.New("mta-sts policy: no mode")
	case !hasAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case len(p.MX) == 0 && p.Mode != STSNone:
		return nil, fmt.Errorf("mta-sts policy: mode %s without mx", p.Mode)
	}
	return p, nil
}

// validPattern accepts a host name, or "*." and a host name.
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Matches reports whether the MX host name matches one of the policy's mx
// patterns (RFC 8461 §4.1): exactly, or "*.example.com" for one label
// left of example.com (not example.com itself, nor a.b.example.com). Case
// and a trailing dot are ignored.
func (p *STSPolicy) Matches(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if suf, ok := strings.CutPrefix(pat, "*."); ok {
			if first, rest, found := strings.Cut(h, "."); found && first != "" && rest == suf {
				return true
			}
			continue
		}
		if h == pat {
			return true
		}
	}
	return false
}

// String renders the policy as its file would say it.
func (p *STSPolicy) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: STSv1\nmode: %s\n", p.Mode)
	for _, m := range p.MX {
		fmt.Fprintf(&b, "mx: %s\n", m)
	}
	fmt.Fprintf(&b, "max_age: %d\n", int64(p.MaxAge/time.Second))
	return b.String()
}

// errNoSTSRecord says a domain publishes no MTA-STS TXT record.
var errNoSTSRecord = errors.New("no MTA-STS TXT record")

// ParseSTSRecord finds the policy id in a domain's TXT records at
// _mta-sts (RFC 8461 §3.1), each given with its strings joined: records
// not starting with "v=STSv1" are ignored; none is errNoSTSRecord, and
// more than one means no policy too (the RFC says so, as an error here so
// that the caller logs why). The id is 1 to 32 letters and digits.
func ParseSTSRecord(txts []string) (id string, err error) {
	var recs []string
	for _, t := range txts {
		if t == "v=STSv1" || strings.HasPrefix(t, "v=STSv1;") || strings.HasPrefix(t, "v=STSv1 ") {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return "", errNoSTSRecord
	case 1:
	default:
		return "", fmt.Errorf("mta-sts: %d STSv1 TXT records, at most one is allowed", len(recs))
	}
	for _, f := range strings.Split(recs[0], ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if k != "id" {
			continue
		}
		if v == "" || len(v) > 32 {
			return "", fmt.Errorf("mta-sts TXT: id %q is not 1 to 32 characters", v)
		}
		for i := 0; i < len(v); i++ {
			c := v[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				return "", fmt.Errorf("mta-sts TXT: id %q is not letters and digits", v)
			}
		}
		return v, nil
	}
	return "", errors.New("mta-sts TXT: no id")
}
