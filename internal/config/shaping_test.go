package config

import (
	"strings"
	"testing"
	"time"
)

// Each bad shaping config, loaded from a file, yields exactly one error
// naming the key path and the value.
func TestShapingValidationNamesKey(t *testing.T) {
	t.Parallel()
	const bindings = `bindings:
  - name: b1
  - name: b2
binding_groups:
  - name: g2
    bindings: [{name: b2}]
`
	tests := []struct{ name, yaml, want string }{
		{"rate unit", `
shaping:
  domains:
    - match: a.org
    - match: b.org
    - match: c.org
      max_message_rate: "10/x"
`, `config: shaping.domains[2].max_message_rate: "10/x": unit must be s, m, h or d`},
		{"rate zero", "shaping:\n  default:\n    max_connection_rate: 0/s\n",
			`config: shaping.default.max_connection_rate: "0/s": must be more than 0`},
		{"rate words", "shaping:\n  default:\n    max_message_rate: lots\n",
			`config: shaping.default.max_message_rate: "lots": no "/"`},
		{"rate number", "shaping:\n  default:\n    max_message_rate: 1e3/s\n",
			`config: shaping.default.max_message_rate: "1e3/s": "1e3" is not a number`},
		{"provider no name", "shaping:\n  providers:\n    - match_mx: [.p.net]\n",
			`config: shaping.providers[0].name: "" is not a valid name`},
		{"provider no match", "shaping:\n  providers:\n    - name: p\n",
			`config: shaping.providers[0]: provider "p" matches nothing: give match_mx or match_domain`},
		{"provider dup", "shaping:\n  providers:\n    - name: p\n      match_mx: [.p.net]\n    - name: p\n      match_domain: [p.org]\n",
			`config: shaping.providers[1].name: provider "p" is defined twice`},
		{"provider bad suffix", "shaping:\n  providers:\n    - name: p\n      match_mx: [\"..p.net\"]\n",
			`config: shaping.providers[0].match_mx[0]: "..p.net" is not a host-name suffix`},
		{"domain dup", "shaping:\n  domains:\n    - match: A.org\n    - match: a.org.\n",
			`config: shaping.domains[1].match: "a.org" is already shaping.domains[0]`},
		{"domain bad match", "shaping:\n  domains:\n    - match: \"a.*.org\"\n",
			`config: shaping.domains[0].match: "a.*.org" is not an exact domain, "*.suffix" or "*"`},
		{"domain double star", "shaping:\n  domains:\n    - match: \"**.org\"\n",
			`config: shaping.domains[0].match: "**.org" is not an exact domain`},
		{"unknown binding", bindings + `
shaping:
  domains:
    - match: a.org
      bindings:
        - binding: b1
          max_connections: 2
        - binding: b9
          max_connections: 2
`, `config: shaping.domains[0].bindings[1].binding: no binding "b9"`},
		{"unknown group", bindings + "shaping:\n  sites:\n    - mx: [mx.a.org]\n      bindings:\n        - group: g9\n",
			`config: shaping.sites[0].bindings[0].group: no binding group "g9"`},
		{"binding and group", bindings + "shaping:\n  domains:\n    - match: a.org\n      bindings:\n        - binding: b1\n          group: g2\n",
			`config: shaping.domains[0].bindings[0]: has both binding "b1" and group "g2": give one`},
		{"neither binding nor group", "shaping:\n  domains:\n    - match: a.org\n      bindings:\n        - max_connections: 2\n",
			`config: shaping.domains[0].bindings[0]: needs binding or group`},
		{"binding twice", bindings + "shaping:\n  domains:\n    - match: a.org\n      bindings:\n        - binding: b1\n        - binding: b1\n",
			`config: shaping.domains[0].bindings[1]: binding b1 is already narrowed in shaping.domains[0].bindings[0]`},
		{"negative connections", "shaping:\n  domains:\n    - match: a.org\n      max_connections: -1\n",
			`config: shaping.domains[0].max_connections: -1 must be at least 1`},
		{"zero deliveries", "shaping:\n  default:\n    max_deliveries_per_connection: 0\n",
			`config: shaping.default.max_deliveries_per_connection: 0 must be at least 1`},
		{"negative failures", "shaping:\n  providers:\n    - name: p\n      match_mx: [.p.net]\n      consecutive_connection_failures_before_delay: -3\n",
			`config: shaping.providers[0].consecutive_connection_failures_before_delay: -3 must be at least 1`},
		{"negative idle", "shaping:\n  domains:\n    - match: \"*\"\n      idle_timeout: -1s\n",
			`config: shaping.domains[0].idle_timeout: -1s is negative`},
		{"zero retry", "shaping:\n  default:\n    retry_interval: 0s\n",
			`config: shaping.default.retry_interval: 0s must be positive`},
		{"retry order", "shaping:\n  domains:\n    - match: \"*.a.org\"\n      retry_interval: 2h\n      max_retry_interval: 1h\n",
			`config: shaping.domains[0].max_retry_interval: 1h0m0s is less than shaping.domains[0].retry_interval (2h0m0s)`},
		{"provider key in domain", "shaping:\n  domains:\n    - match: a.org\n      provider_max_message_rate: 10/s\n",
			`config: shaping.domains[0].provider_max_message_rate: is one budget across a provider's sites`},
		{"site empty", "shaping:\n  sites:\n    - max_connections: 3\n",
			`config: shaping.sites[0].mx: must list the site's MX hosts`},
		{"site dup", "shaping:\n  sites:\n    - mx: [b.net, a.net]\n    - mx: [A.net, b.net, a.net]\n",
			`config: shaping.sites[1].mx: the MX set "a.net,b.net" is already shaping.sites[0]`},
		{"site bad host", "shaping:\n  sites:\n    - mx: [\"mx a.net\"]\n",
			`config: shaping.sites[0].mx[0]: "mx a.net" is not a host name`},
		{"bad duration", "shaping:\n  default:\n    max_age: 3 days\n",
			`shaping.default.max_age: "3 days" is not a duration`},
		{"bad rollup", "shaping:\n  domains:\n    - match: a.org\n      mx_rollup: sometimes\n",
			`shaping.domains[0].mx_rollup: "sometimes" is not a valid bool`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(writeFile(t, "c.yaml", tt.yaml))
			if err == nil {
				t.Fatalf("Load = nil, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != 1 {
				t.Errorf("want exactly one problem, got %q", lines)
			}
			if !strings.Contains(lines[0], tt.want) {
				t.Errorf("Load = %q, want %q", lines[0], tt.want)
			}
		})
	}
}

func TestTopLevelDomainsRefused(t *testing.T) {
	t.Parallel()
	for _, yaml := range []string{
		"domains:\n  - match: \"*\"\n    max_connections: 5\n",
		"domains: []\n",
	} {
		p := writeFile(t, "old.yaml", yaml)
		_, err := Load(p)
		want := "config: " + p + ": domains: moved to shaping.domains (same entries; max_connections_per_binding is now a bindings: narrowing)"
		if err == nil || err.Error() != want {
			t.Errorf("Load(%q) = %v, want %q", yaml, err, want)
		}
	}
}

func TestShapingDefaults(t *testing.T) {
	t.Parallel()
	d := Default().Shaping.Default
	if *d.MaxConnections != 20 || *d.MaxDeliveriesPerConnection != 100 || *d.ConsecutiveConnectionFailuresBeforeDelay != 5 {
		t.Errorf("shaping.default = %+v", d)
	}
	if d.MaxMessageRate != nil || d.MaxConnectionRate != nil || d.RetryInterval != nil || d.MaxAge != nil {
		t.Errorf("rates and timings must be unset (unlimited, from delivery.*): %+v", d)
	}
	// A file that sets one default key keeps the others.
	c, err := Load(writeFile(t, "c.yaml", "shaping:\n  default:\n    max_message_rate: 50/s\n    max_age: 48h\n"))
	if err != nil {
		t.Fatal(err)
	}
	d = c.Shaping.Default
	if *d.MaxConnections != 20 || *d.MaxMessageRate != "50/s" || *d.MaxAge != 48*time.Hour || d.IdleTimeout != nil {
		t.Errorf("merged shaping.default = %+v", d)
	}
}

// An optional key, nil by default, can still be set from the environment.
func TestShapingEnvOverride(t *testing.T) {
	t.Setenv("MTAD_SHAPING_DEFAULT_MAX_MESSAGE_RATE", "7/s")
	t.Setenv("MTAD_SHAPING_DEFAULT_MAX_CONNECTIONS", "9")
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	d := c.Shaping.Default
	if d.MaxMessageRate == nil || *d.MaxMessageRate != "7/s" || *d.MaxConnections != 9 {
		t.Errorf("shaping.default from env = %+v", d)
	}
	t.Setenv("MTAD_SHAPING_DEFAULT_MAX_MESSAGE_RATE", "7/week")
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), `shaping.default.max_message_rate: "7/week": unit must be`) {
		t.Errorf("Load = %v, want the bad rate named", err)
	}
}

func TestParseRateConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in  string
		n   float64
		per time.Duration
		err string
	}{
		{"100/s", 100, time.Second, ""},
		{" 10,000 / h ", 10000, time.Hour, ""},
		{"1,234,567/d", 1234567, 24 * time.Hour, ""},
		{"2.5/s", 2.5, time.Second, ""},
		{"3000/m", 3000, time.Minute, ""},
		{"Unlimited", 0, 0, ""},
		{"", 0, 0, "empty rate"},
		{"0/s", 0, 0, "must be more than 0"},
		{"0.0/s", 0, 0, "must be more than 0"},
		{"-1/s", 0, 0, "is not a number"},
		{"1/x", 0, 0, "unit must be s, m, h or d"},
		{"1/", 0, 0, "unit must be s, m, h or d"},
		{"/s", 0, 0, "is not a number"},
		{"10,00/s", 0, 0, "is not a number"},
		{"1000,000/s", 0, 0, "is not a number"},
		{"1./s", 0, 0, "is not a number"},
		{".5/s", 0, 0, "is not a number"},
		{"inf/s", 0, 0, "is not a number"},
		{"0x10/s", 0, 0, "is not a number"},
		{"1/s/s", 0, 0, "unit must be"},
		{"100", 0, 0, `no "/"`},
	}
	for _, tt := range tests {
		n, per, err := ParseRate(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseRate(%q) = %v, %v, %v; want error %q", tt.in, n, per, err, tt.err)
			}
			continue
		}
		if err != nil || n != tt.n || per != tt.per {
			t.Errorf("ParseRate(%q) = %v, %v, %v; want %v, %v", tt.in, n, per, err, tt.n, tt.per)
		}
	}
}

func TestSiteKey(t *testing.T) {
	t.Parallel()
	if got, want := SiteKey([]string{"MX2.a.net.", "mx1.a.net", "mx2.a.net"}), "mx1.a.net,mx2.a.net"; got != want {
		t.Errorf("SiteKey = %q, want %q", got, want)
	}
	if got := SiteKey(nil); got != "" {
		t.Errorf("SiteKey(nil) = %q", got)
	}
}
