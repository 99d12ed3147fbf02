package admin

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// TestParseMessageQueryDomain: a message list's domain is taken as
// U-labels or A-labels, like the other endpoints', and reaches the queues
// as A-labels; one that cannot be converted is a 400 naming domain.
func TestParseMessageQueryDomain(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ query, domain, err string }{
		{"domain=b%C3%BCcher.test", "xn--bcher-kva.test", ""},
		{"domain=B%C3%9CCHER.test&binding=b1", "xn--bcher-kva.test", ""},
		{"domain=xn--bcher-kva.test", "xn--bcher-kva.test", ""},
		{"domain=example.test", "example.test", ""},
		{"sender=a@b.test", "", ""},
		{"domain=b%C3%BC%E2%80%8Ec.test", "", "domain"}, // a left-to-right mark: not a valid label
	} {
		v, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		q, err := parseMessageQuery(v)
		var pe *ParamError
		switch {
		case c.err != "":
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want a ParamError naming %s", c.query, err, c.err)
			}
		case err != nil || q.Domain != c.domain:
			t.Errorf("%s: domain %q, %v; want %q", c.query, q.Domain, err, c.domain)
		}
	}
}
