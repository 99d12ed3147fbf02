package config

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSSection(t *testing.T) {
	t.Parallel()
	c := Default()
	if !c.TLS.MTASTS || c.TLS.DANE || c.TLS.CAFile != "" {
		t.Fatalf("defaults: %+v", c.TLS)
	}
	if got, want := c.MTASTSDir(), filepath.Join(c.Spool.Dir, "mta-sts"); got != want {
		t.Errorf("default cache dir %q, want %q", got, want)
	}
	p := writeFile(t, "mtad.yaml", `
dns:
  servers: [127.0.0.1:53]
delivery:
  tls: verified
tls:
  mta_sts: false
  dane: true
  mta_sts_cache_dir: /var/cache/mtad-sts
shaping:
  domains:
    - match: example.com
      tls: required
      mta_sts: true
      dane: false
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	d := c.Shaping.Domains[0]
	if c.Delivery.TLS != "verified" || c.TLS.MTASTS || !c.TLS.DANE || c.MTASTSDir() != "/var/cache/mtad-sts" ||
		d.TLS == nil || *d.TLS != "required" || d.MTASTS == nil || !*d.MTASTS || d.DANE == nil || *d.DANE {
		t.Errorf("loaded %+v, domain %+v", c.TLS, d)
	}
}

func TestTLSValidationNamesKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	bad := "bogus"
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"ca missing", func(c *Config) { c.TLS.CAFile = filepath.Join(dir, "nope.pem") }, `config: tls.ca_file: "` + filepath.Join(dir, "nope.pem") + `": open`},
		{"ca not pem", func(c *Config) { c.TLS.CAFile = key }, `config: tls.ca_file: "` + key + `" holds no PEM certificate`},
		{"cache dir", func(c *Config) { c.TLS.MTASTSCacheDir = "." }, `config: tls.mta_sts_cache_dir: "." is the working directory`},
		{"scope tls", func(c *Config) {
			c.Shaping.Domains = []ShapingDomain{{Match: "a.test", ShapingValues: ShapingValues{TLS: &bad}}}
		},
			`config: shaping.domains[0].tls: "bogus" is not one of opportunistic|opportunistic_no_fallback|required|verified|disabled`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.mutate(c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("got %v, want prefix %q", err, tt.want)
			}
		})
	}
	c := Default()
	c.TLS.CAFile = cert
	if err := c.Validate(); err != nil {
		t.Fatalf("good ca_file: %v", err)
	}
	pool, err := c.Roots()
	if err != nil || pool == nil {
		t.Fatalf("Roots: %v", err)
	}
}

// TestDANENeedsServers: DANE on, globally or in any scope, without
// dns.servers is refused naming the key: it trusts a validating resolver's
// AD bit, and the system's is not known to validate.
func TestDANENeedsServers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, key string }{
		{"tls:\n  dane: true\n", "tls.dane"},
		{"shaping:\n  domains:\n    - match: a.test\n      dane: true\n", "shaping.domains[0].dane"},
		{"shaping:\n  providers:\n    - name: p\n      match_mx: [.p.test]\n      bindings:\n        - group: default\n          dane: true\n",
			"shaping.providers[0].bindings[0].dane"},
	} {
		_, err := Load(writeFile(t, "mtad.yaml", tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.key+": true needs dns.servers") {
			t.Errorf("%q: %v, want an error naming %s", tc.yaml, err, tc.key)
		}
		if _, err := Load(writeFile(t, "mtad.yaml", "dns:\n  servers: [127.0.0.1:53]\n"+tc.yaml)); err != nil {
			t.Errorf("with dns.servers, %q: %v", tc.yaml, err)
		}
	}
}
