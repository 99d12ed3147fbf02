package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
)

// loadShaper writes yaml to a file, loads it through config.Load (defaults,
// decoding and validation as in the daemon) and builds its Shaper.
func loadShaper(t testing.TB, yaml string) *Shaper {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mtad.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const shapingYAML = `
delivery:
  retry_interval: 10m
  max_retry_interval: 2h
  max_age: 48h
  idle_timeout: 3s
bindings:
  - name: b1
  - name: b2
  - name: b3
binding_groups:
  - name: g2
    bindings: [{name: b2}, {name: b3}]
shaping:
  default:
    max_connections: 8
    max_message_rate: "100/s"
    provider_max_connections: 40
  providers:
    - name: google
      match_mx: [".google.com", ".googlemail.com"]
      max_connections: 20
      max_message_rate: "50/s"
      provider_max_message_rate: "3000/m"
      retry_interval: 15m
      bindings:
        - binding: b1
          max_message_rate: "30/s"
    - name: microsoft
      match_mx: [".outlook.com"]
      match_domain: ["hotmail.com"]
      max_connections: 5
    - name: late
      match_mx: [".google.com"]
      max_connections: 99
  sites:
    - mx: [mx2.shared.net, MX1.shared.net.]
      max_connections: 6
      max_connection_rate: "10/s"
      bindings:
        - group: g2
          max_connections: 3
    - mx: [aspmx.l.google.com]
      max_deliveries_per_connection: 500
  domains:
    - match: "*"
      max_age: 24h
    - match: "*.example.com"
      max_connections: 4
    - match: "*.deep.example.com"
      max_connections: 2
      mx_rollup: false
    - match: gmail.com
      max_message_rate: "10/s"
      bindings:
        - group: g2
          max_message_rate: "5/s"
          max_connections: 7
        - binding: b3
          max_message_rate: "1/s"
    - match: solo.org
      mx_rollup: false
      max_retry_interval: 5m
`

func TestResolve(t *testing.T) {
	t.Parallel()
	s := loadShaper(t, shapingYAML)
	gmx := []string{"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com."}
	shared := []string{"mx1.shared.net", "mx2.shared.net"}
	rate := func(n float64, per time.Duration) Rate { return Rate{N: n, Per: per} }

	type want struct {
		field  string // a config key
		value  any
		source string
	}
	get := func(sh *Shaping, key string) any {
		switch key {
		case "max_connections":
			return sh.MaxConnections
		case "max_deliveries_per_connection":
			return sh.MaxDeliveriesPerConnection
		case "max_message_rate":
			return sh.MaxMessageRate
		case "max_connection_rate":
			return sh.MaxConnectionRate
		case "provider_max_connections":
			return sh.ProviderMaxConnections
		case "provider_max_message_rate":
			return sh.ProviderMaxMessageRate
		case "retry_interval":
			return sh.RetryInterval
		case "max_retry_interval":
			return sh.MaxRetryInterval
		case "max_age":
			return sh.MaxAge
		case "idle_timeout":
			return sh.IdleTimeout
		case "consecutive_connection_failures_before_delay":
			return sh.ConsecutiveConnectionFailuresBeforeDelay
		case "mx_rollup":
			return sh.MXRollup
		}
		t.Fatalf("no key %s", key)
		return nil
	}
	tests := []struct {
		name           string
		domain         string
		mx             []string
		binding        string
		provider, site string
		wants          []want
	}{
		{"no scope but default and *", "other.net", []string{"mx.other.net"}, "b1", "", "mx.other.net", []want{
			{"max_connections", 8, "default"},
			{"max_message_rate", rate(100, time.Second), "default"},
			{"max_connection_rate", Rate{}, "built-in"},
			{"max_deliveries_per_connection", 100, "default"},
			{"consecutive_connection_failures_before_delay", 5, "default"},
			{"provider_max_connections", 40, "default"},
			{"retry_interval", 10 * time.Minute, "delivery"},
			{"max_retry_interval", 2 * time.Hour, "delivery"},
			{"max_age", 24 * time.Hour, "domain *"},
			{"idle_timeout", 3 * time.Second, "delivery"},
			{"mx_rollup", true, "built-in"},
		}},
		{"provider by every MX", "workspace.biz", gmx, "b2", "google", "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com", []want{
			{"max_connections", 20, "provider google"},
			{"max_message_rate", rate(50, time.Second), "provider google"},
			{"provider_max_message_rate", rate(3000, time.Minute), "provider google"},
			{"retry_interval", 15 * time.Minute, "provider google"},
		}},
		{"provider binding narrowing", "workspace.biz", gmx, "b1", "google", "", []want{
			{"max_message_rate", rate(30, time.Second), "provider google binding b1"},
			{"max_connections", 20, "provider google"},
		}},
		{"provider needs every MX", "mixed.biz", []string{"aspmx.l.google.com", "backup.mixed.biz"}, "b1", "", "aspmx.l.google.com,backup.mixed.biz", []want{
			{"max_connections", 8, "default"},
		}},
		{"provider suffix is below the name", "g.biz", []string{"google.com"}, "", "", "", []want{
			{"max_connections", 8, "default"},
		}},
		{"provider by domain, no MX yet", "HOTMAIL.com.", nil, "", "microsoft", "domain:hotmail.com", []want{
			{"max_connections", 5, "provider microsoft"},
		}},
		{"provider by domain suffix", "eu.hotmail.com", nil, "", "microsoft", "", []want{
			{"max_connections", 5, "provider microsoft"},
		}},
		{"domain beats provider, site beats provider", "gmail.com", []string{"aspmx.l.google.com"}, "b1", "google", "aspmx.l.google.com", []want{
			{"max_message_rate", rate(30, time.Second), "provider google binding b1"},
			{"max_deliveries_per_connection", 500, "site aspmx.l.google.com"},
			{"max_connections", 20, "provider google"},
		}},
		{"domain beats provider without narrowing", "gmail.com", []string{"aspmx.l.google.com"}, "", "google", "", []want{
			{"max_message_rate", rate(10, time.Second), "domain gmail.com"},
		}},
		{"group narrowing", "gmail.com", gmx, "b2", "google", "", []want{
			{"max_message_rate", rate(5, time.Second), "domain gmail.com group g2"},
			{"max_connections", 7, "domain gmail.com group g2"},
		}},
		{"binding beats its group in one scope", "gmail.com", gmx, "b3", "google", "", []want{
			{"max_message_rate", rate(1, time.Second), "domain gmail.com binding b3"},
			{"max_connections", 7, "domain gmail.com group g2"},
		}},
		{"unknown binding narrows nothing", "gmail.com", gmx, "b9", "google", "", []want{
			{"max_message_rate", rate(10, time.Second), "domain gmail.com"},
		}},
		{"site rule, order-free MX set", "a.org", []string{"MX2.shared.net.", "mx1.shared.net", "mx2.shared.net"}, "b1", "", "mx1.shared.net,mx2.shared.net", []want{
			{"max_connections", 6, "site mx1.shared.net,mx2.shared.net"},
			{"max_connection_rate", rate(10, time.Second), "site mx1.shared.net,mx2.shared.net"},
		}},
		{"site group narrowing", "b.org", shared, "b3", "", "mx1.shared.net,mx2.shared.net", []want{
			{"max_connections", 3, "site mx1.shared.net,mx2.shared.net group g2"},
		}},
		{"*.suffix", "shop.example.com", shared, "", "", "mx1.shared.net,mx2.shared.net", []want{
			{"max_connections", 4, "domain *.example.com"},
		}},
		{"*.suffix not the suffix itself", "example.com", nil, "", "", "domain:example.com", []want{
			{"max_connections", 8, "default"},
		}},
		{"longest suffix wins", "a.deep.example.com", shared, "", "", "domain:a.deep.example.com", []want{
			{"max_connections", 2, "domain *.deep.example.com"},
			{"mx_rollup", false, "domain *.deep.example.com"},
			{"max_age", 24 * time.Hour, "domain *"},
		}},
		{"domain narrowing beats site narrowing", "gmail.com", shared, "b2", "", "mx1.shared.net,mx2.shared.net", []want{
			{"max_connections", 7, "domain gmail.com group g2"},
		}},
		{"mx_rollup false", "solo.org", shared, "", "", "domain:solo.org", []want{
			{"mx_rollup", false, "domain solo.org"},
			{"max_connections", 6, "site mx1.shared.net,mx2.shared.net"},
			// 5m under delivery's 10m retry: raised to it.
			{"max_retry_interval", 10 * time.Minute, "domain solo.org"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := s.Resolve(tt.domain, tt.mx, tt.binding)
			if got.Provider != tt.provider {
				t.Errorf("Provider = %q, want %q", got.Provider, tt.provider)
			}
			if p := s.ProviderOf(tt.domain, tt.mx); p != tt.provider {
				t.Errorf("ProviderOf = %q, want %q", p, tt.provider)
			}
			if tt.site != "" && got.Site != tt.site {
				t.Errorf("Site = %q, want %q", got.Site, tt.site)
			}
			for _, w := range tt.wants {
				if v := get(got, w.field); v != w.value {
					t.Errorf("%s = %v, want %v", w.field, v, w.value)
				}
				if src := got.Sources[w.field]; src != w.source {
					t.Errorf("Sources[%s] = %q, want %q", w.field, src, w.source)
				}
			}
			if len(got.Sources) != len(keyNames) {
				t.Errorf("Sources has %d keys, want every one of %d: %v", len(got.Sources), len(keyNames), got.Sources)
			}
		})
	}
}

// The first provider in file order wins, and a domain's provider keys are
// the provider's budget, the same for all its sites.
func TestResolveProviderAcrossSites(t *testing.T) {
	t.Parallel()
	s := loadShaper(t, shapingYAML)
	a := s.Resolve("one.biz", []string{"aspmx.l.google.com"}, "b2")
	b := s.Resolve("two.biz", []string{"mx.googlemail.com", "alt.google.com"}, "b2")
	if a.Provider != "google" || b.Provider != "google" {
		t.Fatalf("providers %q, %q; want google for both (not the later \"late\")", a.Provider, b.Provider)
	}
	if a.Site == b.Site {
		t.Errorf("different MX sets share site %q", a.Site)
	}
	if a.ProviderMaxMessageRate != b.ProviderMaxMessageRate || a.ProviderMaxMessageRate.String() != "3000/m" {
		t.Errorf("provider budget %v and %v, want 3000/m for both", a.ProviderMaxMessageRate, b.ProviderMaxMessageRate)
	}
	// Two domains on one MX set share the site key; with mx_rollup false
	// they do not.
	x, y := s.Resolve("x.org", []string{"mx1.shared.net", "mx2.shared.net"}, ""), s.Resolve("y.org", []string{"mx2.shared.net", "mx1.shared.net"}, "")
	if x.Site != y.Site {
		t.Errorf("same MX set, sites %q and %q", x.Site, y.Site)
	}
	if z := s.Resolve("solo.org", []string{"mx1.shared.net", "mx2.shared.net"}, ""); z.Site == x.Site {
		t.Errorf("mx_rollup false still shares site %q", z.Site)
	}
}

// A config without shaping entries gives the built-in defaults, with the
// delivery.* timings.
func TestResolveDefaults(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	s, err := NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := s.Resolve("example.com", nil, "default")
	if got.MaxConnections != 20 || got.MaxDeliveriesPerConnection != 100 || got.ConsecutiveConnectionFailuresBeforeDelay != 5 ||
		!got.MaxMessageRate.Unlimited() || !got.MaxConnectionRate.Unlimited() || got.ProviderMaxConnections != 0 ||
		got.RetryInterval != cfg.Delivery.RetryInterval || got.MaxRetryInterval != cfg.Delivery.MaxRetryInterval ||
		got.MaxAge != cfg.Delivery.MaxAge || got.IdleTimeout != cfg.Delivery.IdleTimeout || !got.MXRollup ||
		got.Provider != "" || got.Site != "domain:example.com" {
		t.Errorf("defaults: %+v", got)
	}
	// A hand-built config with an empty default still has limits.
	cfg = config.Default()
	cfg.Shaping = config.Shaping{}
	if s, err = NewShaper(cfg); err != nil {
		t.Fatal(err)
	}
	if got := s.Resolve("example.com", nil, ""); got.MaxConnections != 20 || got.Sources["max_connections"] != "built-in" {
		t.Errorf("empty default: %d from %q", got.MaxConnections, got.Sources["max_connections"])
	}
}

// The shipped config's providers match the MX hosts the providers publish.
func TestShippedProviders(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load("../../configs/mtad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		domain string
		mx     []string
		want   string
	}{
		{"gmail.com", []string{"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"}, "google"},
		{"corp.example", []string{"aspmx.l.google.com", "alt1.aspmx.l.google.com", "aspmx2.googlemail.com"}, "google"},
		{"hotmail.com", []string{"hotmail-com.olc.protection.outlook.com"}, "microsoft"},
		{"live.com", nil, "microsoft"},
		{"contoso.example", []string{"contoso-example.mail.protection.outlook.com"}, "microsoft"},
		{"yahoo.com", []string{"mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"}, "yahoo"},
		{"aol.com", []string{"mx-aol.mail.gm0.yahoodns.net"}, "yahoo"},
		{"icloud.com", []string{"mx01.mail.icloud.com", "mx02.mail.icloud.com"}, "apple"},
		{"comcast.net", []string{"mx1a1.comcast.net", "mx2c1.comcast.net"}, "comcast"},
		{"acme.example", []string{"us-smtp-inbound-1.mimecast.com", "us-smtp-inbound-2.mimecast.com"}, "mimecast"},
		{"acme.example", []string{"us-smtp-inbound-1.mimecast.com", "mx.acme.example"}, ""},
	} {
		if got := s.ProviderOf(tt.domain, tt.mx); got != tt.want {
			t.Errorf("ProviderOf(%s, %v) = %q, want %q", tt.domain, tt.mx, got, tt.want)
		}
	}
	g := s.Resolve("gmail.com", []string{"gmail-smtp-in.l.google.com"}, "default")
	if g.MaxConnections < 1 || g.MaxConnections > 20 || g.MaxMessageRate.Unlimited() || g.ProviderMaxMessageRate.Unlimited() {
		t.Errorf("shipped google shaping is not conservative: %+v", g)
	}
}

func TestNewShaperRefusesWhatItCannotCompile(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	bad := "10/x"
	cfg.Shaping.Domains = []config.ShapingDomain{{Match: "a.org", Bindings: []config.BindingShaping{
		{Group: "nope"},
		{Binding: "default", ShapingValues: config.ShapingValues{MaxMessageRate: &bad}},
	}}}
	_, err := NewShaper(cfg)
	for _, want := range []string{
		`shaping.domains[0].bindings[0].group: no binding group "nope"`,
		`shaping.domains[0].bindings[1].max_message_rate: rate "10/x": unit must be s, m, h or d`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewShaper = %v, want %q", err, want)
		}
	}
}

func TestSiteKey(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		mx   []string
		want string
	}{
		{[]string{"b.net", "a.net"}, "a.net,b.net"},
		{[]string{"A.NET.", "a.net", "b.net", "a.net."}, "a.net,b.net"},
		{[]string{"mx.a.net"}, "mx.a.net"},
		{nil, ""},
	} {
		if got := SiteKey(tt.mx); got != tt.want {
			t.Errorf("SiteKey(%v) = %q, want %q", tt.mx, got, tt.want)
		}
	}
}

// BenchmarkResolve resolves pairs against a config of 100 domains and six
// providers, as the scheduler does each time a pair's MX is resolved.
func BenchmarkResolve(b *testing.B) {
	var y strings.Builder
	y.WriteString("bindings:\n  - name: b1\n  - name: b2\nshaping:\n  providers:\n")
	for _, p := range []string{"google", "microsoft", "yahoo", "apple", "comcast", "mimecast"} {
		fmt.Fprintf(&y, "    - name: %s\n      match_mx: [\".%s.example\"]\n      max_connections: 10\n      max_message_rate: \"10/s\"\n      provider_max_message_rate: \"3000/m\"\n", p, p)
	}
	y.WriteString("  domains:\n    - match: \"*\"\n      max_age: 24h\n    - match: \"*.example.org\"\n      max_connections: 4\n")
	for i := range 98 {
		fmt.Fprintf(&y, "    - match: d%d.example.net\n      max_message_rate: \"5/s\"\n      bindings:\n        - binding: b1\n          max_message_rate: \"2/s\"\n", i)
	}
	s := loadShaper(b, y.String())
	mxs := [][]string{
		{"mx1.mimecast.example", "mx2.mimecast.example"},
		{"mx.d7.example.net"},
		{"aspmx.l.google.example", "alt1.aspmx.l.google.example", "alt2.aspmx.l.google.example"},
	}
	domains := []string{"d7.example.net", "shop.example.org", "d97.example.net", "unknown.test"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		sh := s.Resolve(domains[i%len(domains)], mxs[i%len(mxs)], "b1")
		if sh.MaxConnections == 0 {
			b.Fatal("no shaping")
		}
		i++
	}
}
