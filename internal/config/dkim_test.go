package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestDKIMLoad: the dkim: list decodes from YAML, domains are lower-cased
// and the default canonicalization filled in.
func TestDKIMLoad(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "mtad.yaml", `
dkim:
  - domain: Example.COM.
    selector: s2026
    key_file: /etc/mtad/dkim/rsa.pem
  - domain: "*.example.com"
    selector: ed2026
    key_file: /etc/mtad/dkim/ed.pem
    headers: [From, From, Subject]
    canonicalization: simple/relaxed
    expiry: 72h
    dns_check: true
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []DKIMKey{
		{Domain: "example.com", Selector: "s2026", KeyFile: "/etc/mtad/dkim/rsa.pem", Canonicalization: "relaxed/relaxed"},
		{Domain: "*.example.com", Selector: "ed2026", KeyFile: "/etc/mtad/dkim/ed.pem", Headers: []string{"From", "From", "Subject"},
			Canonicalization: "simple/relaxed", Expiry: 72 * time.Hour, DNSCheck: true},
	}
	if len(c.DKIM) != len(want) {
		t.Fatalf("dkim: %+v", c.DKIM)
	}
	for i := range want {
		if g, w := c.DKIM[i], want[i]; g.Domain != w.Domain || g.Selector != w.Selector || g.KeyFile != w.KeyFile ||
			strings.Join(g.Headers, ",") != strings.Join(w.Headers, ",") || g.Canonicalization != w.Canonicalization ||
			g.Expiry != w.Expiry || g.DNSCheck != w.DNSCheck {
			t.Errorf("dkim[%d] = %+v, want %+v", i, g, w)
		}
	}
}

// TestDKIMValidation: each bad value is refused naming its key.
func TestDKIMValidation(t *testing.T) {
	t.Parallel()
	good := func() DKIMKey {
		return DKIMKey{Domain: "example.com", Selector: "s1", KeyFile: "/k.pem", Canonicalization: "relaxed/relaxed"}
	}
	tests := []struct {
		name   string
		mutate func(k *DKIMKey)
		want   string
	}{
		{"domain", func(k *DKIMKey) { k.Domain = "exa mple.com" }, `config: dkim[1].domain: "exa mple.com" is neither a domain name nor *.domain`},
		{"inner star", func(k *DKIMKey) { k.Domain = "a.*.example.com" }, `config: dkim[1].domain: "a.*.example.com"`},
		{"tld wildcard", func(k *DKIMKey) { k.Domain = "*.com" }, `config: dkim[1].domain: "*.com" would sign for every name under a top-level domain`},
		{"selector", func(k *DKIMKey) { k.Selector = "" }, `config: dkim[1].selector: "" is not a DNS label sequence`},
		{"duplicate", func(k *DKIMKey) { k.Selector = "s0" }, `config: dkim[1].selector: domain "example.com" and selector "s0" are already dkim[0]'s`},
		{"key file", func(k *DKIMKey) { k.KeyFile = " " }, `config: dkim[1].key_file: must not be empty`},
		{"header name", func(k *DKIMKey) { k.Headers = []string{"From", "Bad:Name"} }, `config: dkim[1].headers[1]: "Bad:Name" is not a header field name`},
		{"no From", func(k *DKIMKey) { k.Headers = []string{"Subject"} }, `config: dkim[1].headers: must include From`},
		{"canon", func(k *DKIMKey) { k.Canonicalization = "relaxed" }, `config: dkim[1].canonicalization: "relaxed" is not one of`},
		{"expiry negative", func(k *DKIMKey) { k.Expiry = -time.Hour }, `config: dkim[1].expiry: -1h0m0s is negative`},
		{"expiry short", func(k *DKIMKey) { k.Expiry = time.Minute }, `config: dkim[1].expiry: 1m0s is under an hour`},
	}
	for _, tc := range tests {
		c := Default()
		first := good()
		first.Selector = "s0"
		second := good()
		tc.mutate(&second)
		c.DKIM = []DKIMKey{first, second}
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %q, want prefix %q", tc.name, err, tc.want)
		}
	}
	c := Default()
	c.DKIM = []DKIMKey{good(), {Domain: "*.example.com", Selector: "w.sub", KeyFile: "/w.pem", Canonicalization: "simple/simple", Expiry: 2 * time.Hour}}
	if err := c.Validate(); err != nil {
		t.Errorf("good entries refused: %v", err)
	}
}
