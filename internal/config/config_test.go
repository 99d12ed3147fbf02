package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/viper"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// writeFile writes content to name in a fresh temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ptr(n int) *int { return &n }

// sameConfig compares two configs.
func sameConfig(t *testing.T, got, want *Config) {
	t.Helper()
	g, w := *got, *want
	if !reflect.DeepEqual(g, w) {
		t.Errorf("config mismatch\n got: %+v\nwant: %+v", g, w)
	}
}

func TestDefaultIsValid(t *testing.T) {
	t.Parallel()
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestLoadEmptyPathIsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	sameConfig(t, c, Default())
}

// leafKeys lists every key of a config type, as written in YAML.
func leafKeys(prefix string, typ reflect.Type) []string {
	var keys []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("mapstructure")
		if !f.IsExported() || tag == "" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, leafKeys(key, f.Type)...)
			continue
		}
		if f.Type.Kind() == reflect.Pointer {
			// An optional key (shaping): documented, maybe commented
			// out, see TestShippedConfig.
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

func TestShippedConfig(t *testing.T) {
	t.Parallel()
	const path = "../../configs/mtad.yaml"
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	// The shipped file documents the defaults; only the host name is pinned,
	// and the provider entries are shipped as configuration, not defaults.
	want := Default()
	want.Hostname = "localhost"
	want.Shaping.Providers = c.Shaping.Providers
	// make run's capture sink: the reserved .test names README sends to.
	want.Routes = []Route{{Domain: "example.test", Host: "127.0.0.1:2526"}, {Domain: "mtad.test", Host: "127.0.0.1:2526"}}
	want.ResponseRulesFile = "configs/response-rules.yaml" // relative to the repo root, where make run starts
	sameConfig(t, c, want)
	var names []string
	for _, p := range c.Shaping.Providers {
		names = append(names, p.Name)
		if len(p.MatchMX) == 0 || p.MaxConnections == nil || p.MaxMessageRate == nil {
			t.Errorf("shipped provider %s: match_mx, max_connections and max_message_rate should be set: %+v", p.Name, p)
		}
	}
	if got, want := strings.Join(names, ","), "google,microsoft,yahoo,apple,comcast,mimecast"; got != want {
		t.Errorf("shipped providers %s, want %s", got, want)
	}
	if c.Inject.SMTP.Listen[0] != "127.0.0.1:2525" || c.Admin.Listen != "127.0.0.1:8025" {
		t.Errorf("shipped config must stay on loopback: listen %v admin %s", c.Inject.SMTP.Listen, c.Admin.Listen)
	}

	// Every key must be present in the file, so the file documents it.
	v := viper.New()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		t.Fatal(err)
	}
	for _, k := range leafKeys("", reflect.TypeFor[Config]()) {
		if !v.InConfig(k) {
			t.Errorf("key %s missing from %s", k, path)
		}
	}
	// Optional keys may be commented out, but each is documented.
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sv := reflect.TypeFor[ShapingValues]()
	for i := range sv.NumField() {
		k := sv.Field(i).Tag.Get("mapstructure")
		if !v.InConfig("shaping.default."+k) && !strings.Contains(string(text), "# "+k+": ") {
			t.Errorf("shaping key %s is not shown in shaping.default of %s (as \"# %s: ...\")", k, path, k)
		}
	}
}

const fullYAML = `
hostname: mta.example.com
spool:
  dir: /var/spool/mtad
  high_watermark: 1000
  low_watermark: 800
  min_free: 256MiB
log:
  level: debug
  format: console
  file: /var/log/mtad.log
inject:
  smtp:
    listen: ["127.0.0.1:25", "[::1]:25"]
    relay_networks: [10.0.0.0/8]
    max_message_size: 10MB
    max_recipients: 50
    max_sessions: 7
    tls_cert: ""
    tls_key: ""
    auth_users_file: ""
    read_timeout: 10s
    write_timeout: 11s
    data_timeout: 12m
    auth_fail_delay: 2s
    shutdown_grace: 3s
admin:
  listen: 127.0.0.1:9000
metrics:
  top_domains: 50
bindings:
  - name: a
    address: 127.0.0.2
    ehlo: a.example.com
  - name: b
    address: "::1"
binding_groups:
  - name: bulk
    bindings:
      - name: a
        weight: 3
      - name: b
dns:
  servers: [127.0.0.1:5353]
  timeout: 2s
  cache_size: 500
  max_mx_hosts: 3
  max_addresses_per_host: 2
  max_addresses: 5
routes:
  - domain: Example.TEST.
    host: 127.0.0.1:2526
delivery:
  port: 2525
  allow_loopback_mx: true
  allowed_networks: [10.0.0.0/8, "fd00::/8"]
  max_connections: 200
  reserve: 10
  maintain_interval: 500ms
  retry_interval: 1m
  max_retry_interval: 2h
  max_age: 72h
  delay_warning: 30m
  idle_timeout: 1s
  tls: disabled
  tls_failure_ttl: 30m
  chunking: false
  timeouts:
    connect: 1s
    greeting: 2s
    ehlo: 3s
    starttls: 4s
    mail: 5s
    rcpt: 6s
    data_init: 7s
    data_block: 8s
    data_term: 9s
    quit: 10s
    transaction: 11s
shaping:
  default:
    max_message_rate: "100/s"
    retry_interval: 2m
  providers:
    - name: google
      match_mx: [.Google.com.]
      provider_max_message_rate: "3000/m"
      bindings:
        - group: bulk
          max_connections: 3
  sites:
    - mx: [MX2.example.net, mx1.example.net]
      max_connections: 7
  domains:
    - match: "*"
      max_connections: 5
    - match: Example.COM
      mx_rollup: false
      max_deliveries_per_connection: 10
      bindings:
        - binding: b
          max_connections: 2
hooks:
  plugins: [accounting, throttle]
  settings:
    throttle:
      rate: 10
      Per: 1s
runtime:
  gc_percent: 150
  memory_limit: 3GiB
`

func TestFullRoundTrip(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "full.yaml", fullYAML))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Hostname: "mta.example.com",
		Spool:    Spool{Dir: "/var/spool/mtad", HighWatermark: 1000, LowWatermark: 800, MinFree: 256 * MiB},
		Log:      Log{Level: "debug", Format: "console", File: "/var/log/mtad.log"},
		Inject: Inject{SMTP: SMTPInject{
			Listen:         []string{"127.0.0.1:25", "[::1]:25"},
			RelayNetworks:  []string{"10.0.0.0/8"},
			MaxMessageSize: 10 * MB,
			MaxRecipients:  50,
			MaxSessions:    7,
			ReadTimeout:    10 * time.Second,
			WriteTimeout:   11 * time.Second,
			DataTimeout:    12 * time.Minute,
			AuthFailDelay:  2 * time.Second,
			ShutdownGrace:  3 * time.Second,
			// Not in the file: the defaults.
			TLSListen:          []string{},
			MaxSessionsPerIP:   100,
			MaxSessionTime:     time.Hour,
			MaxCommands:        10000,
			MaxReceivedHeaders: 50,
			LongLines:          "convert",
		},
			HTTP: HTTPInject{Listen: []string{}, MaxMessageSize: 25 * MiB, MaxRecipients: 10000},
		},
		Admin:   Admin{Listen: "127.0.0.1:9000", ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute},
		Metrics: Metrics{TopDomains: 50},
		Bindings: []Binding{
			{Name: "a", Address: "127.0.0.2", EHLO: "a.example.com"},
			{Name: "b", Address: "::1"},
		},
		BindingGroups: []BindingGroup{{Name: "bulk", Bindings: []GroupMember{{"a", 3}, {"b", 1}}}},
		DNS: DNS{Servers: []string{"127.0.0.1:5353"}, Timeout: 2 * time.Second, CacheSize: 500,
			MaxMXHosts: 3, MaxAddressesPerHost: 2, MaxAddresses: 5},
		Routes: []Route{{Domain: "example.test", Host: "127.0.0.1:2526"}},
		Delivery: Delivery{
			Port: 2525, AllowLoopbackMX: true, AllowedNetworks: []string{"10.0.0.0/8", "fd00::/8"}, MaxConnections: 200, Reserve: 10,
			MaintainInterval: 500 * time.Millisecond, RetryInterval: time.Minute,
			MaxRetryInterval: 2 * time.Hour, MaxAge: 72 * time.Hour, DelayWarning: 30 * time.Minute, IdleTimeout: time.Second,
			TLS: "disabled", TLSFailureTTL: 30 * time.Minute,
			Timeouts: Timeouts{
				Connect: 1 * time.Second, Greeting: 2 * time.Second, EHLO: 3 * time.Second,
				STARTTLS: 4 * time.Second, Mail: 5 * time.Second, Rcpt: 6 * time.Second,
				DataInit: 7 * time.Second, DataBlock: 8 * time.Second, DataTerm: 9 * time.Second,
				Quit: 10 * time.Second, Transaction: 11 * time.Second,
			},
		},
		Shaping: Shaping{
			Default: ShapingValues{
				MaxConnections:                           ptr(20),
				MaxDeliveriesPerConnection:               ptr(100),
				ConsecutiveConnectionFailuresBeforeDelay: ptr(5),
				MaxMessageRate:                           ptrTo("100/s"),
				RetryInterval:                            ptrTo(2 * time.Minute),
			},
			Providers: []Provider{{
				Name: "google", MatchMX: []string{".google.com"},
				ShapingValues: ShapingValues{ProviderMaxMessageRate: ptrTo("3000/m")},
				Bindings:      []BindingShaping{{Group: "bulk", ShapingValues: ShapingValues{MaxConnections: ptr(3)}}},
			}},
			Sites: []Site{{MX: []string{"mx2.example.net", "mx1.example.net"}, ShapingValues: ShapingValues{MaxConnections: ptr(7)}}},
			Domains: []ShapingDomain{
				{Match: "*", ShapingValues: ShapingValues{MaxConnections: ptr(5)}},
				{Match: "example.com", MXRollup: ptrTo(false),
					ShapingValues: ShapingValues{MaxDeliveriesPerConnection: ptr(10)},
					Bindings:      []BindingShaping{{Binding: "b", ShapingValues: ShapingValues{MaxConnections: ptr(2)}}}},
			},
		},
		TLS: TLS{MTASTS: true},
		Hooks: Hooks{
			Plugins: []string{"accounting", "throttle"},
			// viper lower-cases keys, as the Hooks doc says.
			Settings: map[string]any{"throttle": map[string]any{"rate": 10, "per": "1s"}},
		},
		Runtime: Runtime{GCPercent: 150, MemoryLimit: 3 * GiB},
		Cluster: Default().Cluster,
	}
	sameConfig(t, c, want)
}

func TestValidationErrorsNameKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string // the whole line, or a prefix naming key and value
	}{
		{"hostname", func(c *Config) { c.Hostname = "bad host" }, `config: hostname: "bad host"`},
		{"spool dir", func(c *Config) { c.Spool.Dir = "" }, `config: spool.dir: must not be empty`},
		{"high watermark", func(c *Config) { c.Spool.HighWatermark = -1 }, `config: spool.high_watermark: -1 must be >= 0`},
		{"low watermark", func(c *Config) { c.Spool.LowWatermark = 400000 }, `config: spool.low_watermark: 400000 must be >= 0 and below spool.high_watermark (400000)`},
		{"min free", func(c *Config) { c.Spool.MinFree = 64 * MiB }, `config: spool.min_free: 64MiB is below the least, 80MiB`},
		{"min free negative", func(c *Config) { c.Spool.MinFree = -1 }, `config: spool.min_free: -1 is below the least, 80MiB`},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, `config: log.level: "loud" is not one of`},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, `config: log.format: "xml"`},
		{"listen", func(c *Config) { c.Inject.SMTP.Listen = []string{"127.0.0.1:1", "nope"} }, `config: inject.smtp.listen[1]: "nope" is not host:port`},
		{"listen port", func(c *Config) { c.Inject.SMTP.Listen = []string{"127.0.0.1:99999"} }, `config: inject.smtp.listen[0]: "127.0.0.1:99999" has a bad port`},
		{"allowed network", func(c *Config) { c.Delivery.AllowedNetworks = []string{"10.0.0.0/8", "10.0.0/8"} }, `config: delivery.allowed_networks[1]: "10.0.0/8" is not a CIDR prefix`},
		{"allowed network host bits", func(c *Config) { c.Delivery.AllowedNetworks = []string{"192.168.1.1/16"} }, `config: delivery.allowed_networks[0]: "192.168.1.1/16" has host bits set; the network is 192.168.0.0/16`},
		{"allowed network mapped", func(c *Config) { c.Delivery.AllowedNetworks = []string{"::ffff:10.0.0.0/104"} }, `config: delivery.allowed_networks[0]: "::ffff:10.0.0.0/104": write an IPv4 network in IPv4 form`},
		{"relay cidr", func(c *Config) { c.Inject.SMTP.RelayNetworks = []string{"10.0.0.0/8", "10.0.0/8"} }, `config: inject.smtp.relay_networks[1]: "10.0.0/8" is not a CIDR`},
		{"max size", func(c *Config) { c.Inject.SMTP.MaxMessageSize = 0 }, `config: inject.smtp.max_message_size: 0`},
		{"max rcpt", func(c *Config) { c.Inject.SMTP.MaxRecipients = 0 }, `config: inject.smtp.max_recipients: 0`},
		{"max sessions", func(c *Config) { c.Inject.SMTP.MaxSessions = -1 }, `config: inject.smtp.max_sessions: -1`},
		{"tls listen without cert", func(c *Config) { c.Inject.SMTP.TLSListen = []string{"127.0.0.1:465"} }, `config: inject.smtp.tls_listen: needs tls_cert and tls_key`},
		{"sessions per ip", func(c *Config) { c.Inject.SMTP.MaxSessionsPerIP = -1 }, `config: inject.smtp.max_sessions_per_ip: -1`},
		{"session time", func(c *Config) { c.Inject.SMTP.MaxSessionTime = -1 }, `config: inject.smtp.max_session_time:`},
		{"max commands", func(c *Config) { c.Inject.SMTP.MaxCommands = -1 }, `config: inject.smtp.max_commands: -1`},
		{"auth checks", func(c *Config) { c.Inject.SMTP.MaxAuthChecks = -1 }, `config: inject.smtp.max_auth_checks: -1`},
		{"received headers", func(c *Config) { c.Inject.SMTP.MaxReceivedHeaders = 0 }, `config: inject.smtp.max_received_headers: 0 must be at least 1`},
		{"long lines", func(c *Config) { c.Inject.SMTP.LongLines = "wrap" }, `config: inject.smtp.long_lines: "wrap" must be convert or reject`},
		{"cert without key", func(c *Config) { c.Inject.SMTP.TLSCert = "/c.pem" }, `config: inject.smtp.tls_key: must be set when tls_cert is ("/c.pem")`},
		{"key without cert", func(c *Config) { c.Inject.SMTP.TLSKey = "/k.pem" }, `config: inject.smtp.tls_cert: must be set when tls_key is ("/k.pem")`},
		{"cert missing", func(c *Config) { c.Inject.SMTP.TLSCert, c.Inject.SMTP.TLSKey = missing, missing }, `config: inject.smtp.tls_cert: "` + missing},
		{"auth file missing", func(c *Config) { c.Inject.SMTP.AuthUsersFile = missing }, `config: inject.smtp.auth_users_file: "` + missing},
		{"auth file dir", func(c *Config) { c.Inject.SMTP.AuthUsersFile = dir }, `config: inject.smtp.auth_users_file: "` + dir + `" is not a regular file`},
		{"read timeout", func(c *Config) { c.Inject.SMTP.ReadTimeout = 0 }, `config: inject.smtp.read_timeout: 0s must be positive`},
		{"auth delay", func(c *Config) { c.Inject.SMTP.AuthFailDelay = -time.Second }, `config: inject.smtp.auth_fail_delay: -1s is negative`},
		{"admin", func(c *Config) { c.Admin.Listen = "8025" }, `config: admin.listen: "8025"`},
		{"admin open to all", func(c *Config) { c.Admin.Listen = "0.0.0.0:8025" }, `config: admin.listen: "0.0.0.0:8025" is not a loopback address, so admin.tokens_file must name a tokens file`},
		{"admin no host", func(c *Config) { c.Admin.Listen = ":8025" }, `config: admin.listen: ":8025" is not a loopback address, so admin.tokens_file`},
		{"admin host name", func(c *Config) { c.Admin.Listen = "admin.example.com:8025" }, `config: admin.listen: "admin.example.com:8025" is not a loopback address, so admin.tokens_file`},
		{"admin tokens missing", func(c *Config) { c.Admin.TokensFile = missing }, `config: admin.tokens_file: "` + missing},
		{"admin tokens dir", func(c *Config) { c.Admin.TokensFile = dir }, `config: admin.tokens_file: "` + dir + `" is not a regular file`},
		{"admin read timeout", func(c *Config) { c.Admin.ReadTimeout = 0 }, `config: admin.read_timeout: 0s must be positive`},
		{"admin write timeout", func(c *Config) { c.Admin.WriteTimeout = -time.Second }, `config: admin.write_timeout: -1s must be positive`},
		{"admin idle timeout", func(c *Config) { c.Admin.IdleTimeout = 0 }, `config: admin.idle_timeout: 0s must be positive`},
		{"top domains zero", func(c *Config) { c.Metrics.TopDomains = 0 }, `config: metrics.top_domains: 0 is not in 1-1000`},
		{"top domains many", func(c *Config) { c.Metrics.TopDomains = 1001 }, `config: metrics.top_domains: 1001 is not in 1-1000`},
		{"gc percent", func(c *Config) { c.Runtime.GCPercent = -2 }, `config: runtime.gc_percent: -2 is below -1`},
		{"gc off without limit", func(c *Config) { c.Runtime.GCPercent = -1 }, `config: runtime.gc_percent: -1 (collector off) needs runtime.memory_limit`},
		{"memory limit", func(c *Config) { c.Runtime.MemoryLimit = -1 }, `config: runtime.memory_limit: -1 is negative`},
		{"binding name", func(c *Config) { c.Bindings = []Binding{{Name: "a b"}} }, `config: bindings[0].name: "a b"`},
		{"binding dup", func(c *Config) { c.Bindings = []Binding{{Name: "a"}, {Name: "a"}} }, `config: bindings[1].name: "a" is defined twice`},
		{"binding addr", func(c *Config) { c.Bindings = []Binding{{Name: "a", Address: "127.0.0.300"}} }, `config: bindings[0].address: "127.0.0.300" is not an IPv4 or IPv6 address`},
		{"binding ehlo", func(c *Config) { c.Bindings = []Binding{{Name: "a", EHLO: "-x-"}} }, `config: bindings[0].ehlo: "-x-"`},
		{"group unknown binding", func(c *Config) {
			c.BindingGroups = []BindingGroup{{Name: "g", Bindings: []GroupMember{{"ghost", 1}}}}
		}, `config: binding_groups[0].bindings[0].name: "ghost" is not a binding`},
		{"group weight", func(c *Config) {
			c.BindingGroups = []BindingGroup{{Name: "g", Bindings: []GroupMember{{"default", 0}}}}
		}, `config: binding_groups[0].bindings[0].weight: 0 must be at least 1`},
		{"group dup", func(c *Config) {
			m := []GroupMember{{"default", 1}}
			c.BindingGroups = []BindingGroup{{Name: "g", Bindings: m}, {Name: "g", Bindings: m}}
		}, `config: binding_groups[1].name: "g" is defined twice`},
		{"group empty", func(c *Config) { c.BindingGroups = []BindingGroup{{Name: "g"}} }, `config: binding_groups[0].bindings: group "g" has no bindings`},
		{"dns server", func(c *Config) { c.DNS.Servers = []string{"127.0.0.1"} }, `config: dns.servers[0]: "127.0.0.1" is not host:port`},
		{"dns timeout", func(c *Config) { c.DNS.Timeout = 0 }, `config: dns.timeout: 0s`},
		{"dns cache", func(c *Config) { c.DNS.CacheSize = -1 }, `config: dns.cache_size: -1`},
		{"dns cache off", func(c *Config) { c.DNS.CacheSize = 0 }, `config: dns.cache_size: 0: must be at least 1`},
		{"dns max mx hosts", func(c *Config) { c.DNS.MaxMXHosts = 0 }, `config: dns.max_mx_hosts: 0 is not in 1-100`},
		{"dns max addresses per host", func(c *Config) { c.DNS.MaxAddressesPerHost = 101 }, `config: dns.max_addresses_per_host: 101 is not in 1-100`},
		{"dns max addresses", func(c *Config) { c.DNS.MaxAddresses = -3 }, `config: dns.max_addresses: -3 is not in 1-100`},
		{"route domain", func(c *Config) { c.Routes = []Route{{Domain: "a..b", Host: "h:25"}} }, `config: routes[0].domain: "a..b"`},
		{"route host", func(c *Config) { c.Routes = []Route{{Domain: "a.b", Host: "h"}} }, `config: routes[0].host: "h"`},
		{"route dup", func(c *Config) { c.Routes = []Route{{Domain: "a.b", Host: "h:25"}, {Domain: "A.b", Host: "h:25"}} }, `config: routes[1].domain: "A.b" is routed twice`},
		{"cluster mode", func(c *Config) { c.Cluster.Mode = "mesh" }, `config: cluster.mode: "mesh" is not one of`},
		{"cluster fallback", func(c *Config) { c.Cluster.Fallback = "wait" }, `config: cluster.fallback: "wait" is not one of`},
		{"cluster redis", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379", "redis"} }, `config: cluster.redis[1]: "redis" is not host:port`},
		{"cluster timeout", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379"}; c.Cluster.Timeout = 5 * time.Second }, `config: cluster.timeout: 5s is not in 10ms-1s`},
		{"cluster lease ttl", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379"}; c.Cluster.LeaseTTL = time.Second }, `config: cluster.lease_ttl: 1s is not in 3s-10m`},
		{"cluster password", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379"}; c.Cluster.PasswordFile = missing }, `config: cluster.password_file: open ` + missing},
		{"cluster ca", func(c *Config) {
			c.Cluster.Redis = []string{"127.0.0.1:6379"}
			c.Cluster.TLS = ClusterTLS{Enabled: true, CAFile: missing}
		}, `config: cluster.tls.ca_file: open ` + missing},
		{"cluster tls off", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379"}; c.Cluster.TLS.ServerName = "r" }, `config: cluster.tls.enabled: false, but other cluster.tls keys are set`},
		{"cluster node", func(c *Config) { c.Cluster.Redis = []string{"127.0.0.1:6379"}; c.Cluster.Node = "a:b" }, `config: cluster.node: "a:b"`},
		{"port", func(c *Config) { c.Delivery.Port = 0 }, `config: delivery.port: 0`},
		{"max conns", func(c *Config) { c.Delivery.MaxConnections = 0 }, `config: delivery.max_connections: 0`},
		{"reserve", func(c *Config) { c.Delivery.Reserve = 1000 }, `config: delivery.reserve: 1000 must be at least 0 and less than delivery.max_connections (1000)`},
		{"max retry", func(c *Config) { c.Delivery.MaxRetryInterval = time.Minute }, `config: delivery.max_retry_interval: 1m0s is less than delivery.retry_interval (5m0s)`},
		{"max age", func(c *Config) { c.Delivery.MaxAge = 0 }, `config: delivery.max_age: 0s`},
		{"delay warning", func(c *Config) { c.Delivery.DelayWarning = -time.Hour }, `config: delivery.delay_warning: -1h0m0s is negative`},
		{"delay warning age", func(c *Config) { c.Delivery.DelayWarning = 120 * time.Hour }, `config: delivery.delay_warning: 120h0m0s is not less than delivery.max_age (120h0m0s)`},
		{"tls mode", func(c *Config) { c.Delivery.TLS = "mandatory" }, `config: delivery.tls: "mandatory" is not one of opportunistic|opportunistic_no_fallback|required|verified|disabled`},
		{"timeout", func(c *Config) { c.Delivery.Timeouts.DataTerm = 0 }, `config: delivery.timeouts.data_term: 0s must be positive`},
		{"transaction timeout", func(c *Config) { c.Delivery.Timeouts.Transaction = -time.Second }, `config: delivery.timeouts.transaction: -1s must be positive`},
		{"plugin empty", func(c *Config) { c.Hooks.Plugins = []string{""} }, `config: hooks.plugins[0]: must not be empty`},
		{"plugin dup", func(c *Config) { c.Hooks.Plugins = []string{"a", "a"} }, `config: hooks.plugins[1]: "a" is listed twice`},
		{"plugin settings", func(c *Config) { c.Hooks.Settings = map[string]any{"a": 5} }, `config: hooks.settings.a: must be a map of settings, not int`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.mutate(c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != 1 {
				t.Errorf("want exactly one problem, got %q", lines)
			}
			if !strings.HasPrefix(lines[0], tt.want) {
				t.Errorf("Validate() = %q, want prefix %q", lines[0], tt.want)
			}
		})
	}
}

func TestValidationReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Log.Level = "loud"
	c.Delivery.Port = -1
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "log.level") || !strings.Contains(err.Error(), "delivery.port") {
		t.Fatalf("Validate() = %v, want both log.level and delivery.port", err)
	}
}

func TestLoadValidationError(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "c.yaml", "inject:\n  smtp:\n    relay_networks: [127.0.0.0/8, 10.0.0/8]\n")
	_, err := Load(p)
	const want = `config: inject.smtp.relay_networks[1]: "10.0.0/8" is not a CIDR`
	if err == nil || err.Error() != want {
		t.Fatalf("Load = %v, want %q", err, want)
	}
}

func TestUnknownKeysRejected(t *testing.T) {
	t.Parallel()
	tests := []struct{ yaml, key string }{
		{"spool_dir: x\n", "spool_dir"},
		{"inject:\n  smtp:\n    max_sesions: 3\n", "inject.smtp.max_sesions"},
		{"delivery:\n  timeouts:\n    dataterm: 1s\n", "delivery.timeouts.dataterm"},
		{"bindings:\n  - name: a\n    adress: 127.0.0.2\n", "bindings[0].adress"},
		{"shaping:\n  domains:\n    - match: x.org\n      max_conections: 3\n", "shaping.domains[0].max_conections"},
		{"shaping:\n  domains:\n    - match: x.org\n      max_connections_per_binding: 3\n", "shaping.domains[0].max_connections_per_binding"},
		{"shaping:\n  providers:\n    - name: p\n      match_mx: [.p.net]\n      bindings:\n        - binding: default\n          max_rate: 3\n", "shaping.providers[0].bindings[0].max_rate"},
		{"binding_groups:\n  - name: g\n    bindings:\n      - name: default\n        wieght: 2\n", "binding_groups[0].bindings[0].wieght"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			t.Parallel()
			p := writeFile(t, "c.yaml", tt.yaml)
			_, err := Load(p)
			want := "config: " + p + ": unknown key " + tt.key
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Load = %v, want %q", err, want)
			}
		})
	}
}

func TestBadTypesNameKeyAndValue(t *testing.T) {
	t.Parallel()
	tests := []struct{ yaml, want string }{
		{"delivery:\n  max_connections: lots\n", `delivery.max_connections: "lots" is not a valid int`},
		{"delivery:\n  retry_interval: 5 min\n", `delivery.retry_interval: "5 min" is not a duration`},
		{"delivery:\n  retry_interval: 300\n", `delivery.retry_interval: 300 needs a unit`},
		{"inject:\n  smtp:\n    max_message_size: 12 furlongs\n", `inject.smtp.max_message_size: "12 furlongs" has an unknown size unit`},
		{"inject:\n  smtp:\n    max_message_size: 1.5\n", `inject.smtp.max_message_size: 1.5 is not a whole number`},
		{"delivery:\n  allow_loopback_mx: maybe\n", `delivery.allow_loopback_mx: "maybe" is not a valid bool`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			t.Parallel()
			_, err := Load(writeFile(t, "c.yaml", tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestMalformedYAMLNamesFile(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "broken.yaml", "inject:\n  smtp: [\n")
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("Load = %v, want an error naming %s", err, p)
	}
	missing := filepath.Join(t.TempDir(), "absent.yaml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Load(missing) = %v, want an error naming %s", err, missing)
	}
}

func TestEnvOverride(t *testing.T) {
	// t.Setenv: not parallel.
	p := writeFile(t, "c.yaml", "spool:\n  dir: /from/file\nlog:\n  level: debug\n")
	t.Setenv("MTAD_SPOOL_DIR", "/from/env")
	t.Setenv("MTAD_INJECT_SMTP_LISTEN", "127.0.0.1:2525, [::1]:2525")
	t.Setenv("MTAD_INJECT_SMTP_MAX_MESSAGE_SIZE", "10MB")
	t.Setenv("MTAD_DELIVERY_MAX_CONNECTIONS", "77")
	t.Setenv("MTAD_DELIVERY_RETRY_INTERVAL", "90s")
	t.Setenv("MTAD_DELIVERY_ALLOW_LOOPBACK_MX", "true")
	t.Setenv("MTAD_DELIVERY_TIMEOUTS_DATA_TERM", "1m")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Spool.Dir != "/from/env" {
		t.Errorf("spool.dir = %q, want env to win over file", c.Spool.Dir)
	}
	if c.Log.Level != "debug" {
		t.Errorf("log.level = %q, want the file's value", c.Log.Level)
	}
	if want := []string{"127.0.0.1:2525", "[::1]:2525"}; !reflect.DeepEqual(c.Inject.SMTP.Listen, want) {
		t.Errorf("listen = %q, want %q", c.Inject.SMTP.Listen, want)
	}
	if c.Inject.SMTP.MaxMessageSize != 10*MB {
		t.Errorf("max_message_size = %d", c.Inject.SMTP.MaxMessageSize)
	}
	if c.Delivery.MaxConnections != 77 || c.Delivery.RetryInterval != 90*time.Second ||
		!c.Delivery.AllowLoopbackMX || c.Delivery.Timeouts.DataTerm != time.Minute {
		t.Errorf("delivery = %+v", c.Delivery)
	}

	// Without a file too.
	c, err = Load("")
	if err != nil || c.Spool.Dir != "/from/env" {
		t.Fatalf("Load(\"\") = %+v, %v", c, err)
	}
}

func TestEnvOverrideInvalid(t *testing.T) {
	t.Setenv("MTAD_INJECT_SMTP_RELAY_NETWORKS", "127.0.0.0/8,10.0.0/8")
	_, err := Load("")
	const want = `config: inject.smtp.relay_networks[1]: "10.0.0/8" is not a CIDR`
	if err == nil || err.Error() != want {
		t.Fatalf("Load = %v, want %q", err, want)
	}
	t.Setenv("MTAD_INJECT_SMTP_RELAY_NETWORKS", "")
	t.Setenv("MTAD_DELIVERY_PORT", "smtp")
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), `delivery.port: "smtp"`) {
		t.Fatalf("Load = %v, want delivery.port named", err)
	}
}

func TestSizes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Size
		err  bool
	}{
		{"0", 0, false},
		{"1024", 1024, false},
		{"25MiB", 25 << 20, false},
		{"25 mib", 25 << 20, false},
		{"10MB", 10_000_000, false},
		{"1KB", 1000, false},
		{"1KiB", 1024, false},
		{"2GiB", 2 << 30, false},
		{"3GB", 3_000_000_000, false},
		{"1TiB", 1 << 40, false},
		{"7B", 7, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"1.5MiB", 0, true},
		{"-1", 0, true},
		{"10 furlongs", 0, true},
		{"99999999999999999999", 0, true},
		{"9000000TiB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil {
			back, err := ParseSize(got.String())
			if err != nil || back != got {
				t.Errorf("ParseSize(%q.String() = %q) = %d, %v", tt.in, got.String(), back, err)
			}
		}
	}
	if s := (25 * MiB).String(); s != "25MiB" {
		t.Errorf("String = %q", s)
	}

	// From YAML: an integer of bytes or a string.
	for yaml, want := range map[string]Size{"1048576": MiB, "10MB": 10 * MB, `"4KiB"`: 4 * KiB} {
		c, err := Load(writeFile(t, "c.yaml", "inject:\n  smtp:\n    max_message_size: "+yaml+"\n"))
		if err != nil || c.Inject.SMTP.MaxMessageSize != want {
			t.Errorf("max_message_size: %s → %v, %v; want %d", yaml, c, err, want)
		}
	}
}

func TestGroupWeightDefault(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "c.yaml", `
bindings:
  - name: a
    address: 127.0.0.2
  - name: b
binding_groups:
  - name: g
    bindings:
      - name: a
      - name: b
        weight: 4
`))
	if err != nil {
		t.Fatal(err)
	}
	if want := []GroupMember{{"a", 1}, {"b", 4}}; !reflect.DeepEqual(c.BindingGroups[0].Bindings, want) {
		t.Errorf("members = %+v, want %+v", c.BindingGroups[0].Bindings, want)
	}
	// An explicit 0 is not "unset".
	_, err = Load(writeFile(t, "c.yaml", "binding_groups:\n  - name: g\n    bindings:\n      - name: default\n        weight: 0\n"))
	if err == nil || !strings.Contains(err.Error(), "binding_groups[0].bindings[0].weight: 0") {
		t.Errorf("Load = %v, want weight 0 refused", err)
	}
}

// selfSigned writes a certificate and key to dir and returns their paths.
func selfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestTLSAndAuthFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	users := writeFile(t, "users", "alice:$2a$10$x\n")
	c := Default()
	c.Inject.SMTP.TLSCert, c.Inject.SMTP.TLSKey, c.Inject.SMTP.AuthUsersFile = cert, key, users
	if err := c.Validate(); err != nil {
		t.Fatalf("valid pair: %v", err)
	}
	// Cert and key swapped: they exist but don't parse as a pair.
	c.Inject.SMTP.TLSCert, c.Inject.SMTP.TLSKey = key, cert
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "config: inject.smtp.tls_cert: ") {
		t.Fatalf("swapped pair: %v", err)
	}
}

// Load builds its own viper each call, so concurrent loads (a SIGHUP while
// another reload runs) are safe; -race checks it.
func TestConcurrentLoad(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "full.yaml", fullYAML)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Load(p)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// FuzzParseSize: sizes come from operators' files and environment. Any
// accepted size is non-negative and survives String and back.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"25MiB", "10MB", "0", "1 kib", "9223372036854775807", "1.5GB", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d < 0", s, n)
		}
		back, err := ParseSize(n.String())
		if err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d; String %q parses to %d, %v", s, n, n.String(), back, err)
		}
	})
}

// TestDelayWarningOff: 0 turns delay DSNs off and is valid; the default is 4h.
func TestDelayWarningOff(t *testing.T) {
	t.Parallel()
	if got := Default().Delivery.DelayWarning; got != 4*time.Hour {
		t.Errorf("default delivery.delay_warning = %s, want 4h", got)
	}
	c := Default()
	c.Delivery.DelayWarning = 0
	if err := c.Validate(); err != nil {
		t.Errorf("delay_warning 0: %v", err)
	}
}

func TestLoopbackListen(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:8025": true, "127.9.9.9:0": true, "[::1]:8025": true, "localhost:8025": true,
		"LocalHost:1": true, "[::ffff:127.0.0.1]:1": true,
		"0.0.0.0:8025": false, ":8025": false, "[::]:8025": false, "192.0.2.1:8025": false,
		"admin.example.com:8025": false, "8025": false, "": false,
	} {
		if got := LoopbackListen(addr); got != want {
			t.Errorf("LoopbackListen(%q) = %v, want %v", addr, got, want)
		}
	}
}

// A tokens file opens a non-loopback admin listener; a loopback one needs none.
func TestAdminListenWithTokens(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("ops:"+strings.Repeat("x", 40)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.Admin.Listen = "0.0.0.0:8025"
	c.Admin.TokensFile = tokens
	if err := c.Validate(); err != nil {
		t.Errorf("non-loopback with tokens: %v", err)
	}
	c.Admin.Listen, c.Admin.TokensFile = "[::1]:0", ""
	if err := c.Validate(); err != nil {
		t.Errorf("loopback without tokens: %v", err)
	}
}

// TestYAMLSyntaxErrorLine: a bad line appended to the shipped config is
// reported at its own line, not at the line where the mapping it breaks
// starts (yaml.v3 said "line 15: did not find expected key" for all of
// these).
func TestYAMLSyntaxErrorLine(t *testing.T) {
	t.Parallel()
	shipped, err := os.ReadFile(filepath.Join("..", "..", "configs", "mtad.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Count(shipped, []byte("\n")) + 1 // the appended line's number
	for _, c := range []struct{ line, want string }{
		{" x: 1\n", fmt.Sprintf("line %d: did not find expected key", bad)},
		{"- item\n", fmt.Sprintf("line %d: did not find expected key", bad)},
		{"}\n", fmt.Sprintf("line %d: did not find expected key", bad)},
		{"\tz: 3\n", fmt.Sprintf("line %d: found character that cannot start any token", bad)},
		{"x: [\n", "did not find expected node content"},
	} {
		p := writeFile(t, "mtad.yaml", string(shipped)+c.line)
		_, err := Load(p)
		if err == nil || !strings.HasPrefix(err.Error(), "config: "+p+": YAML syntax: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q appended: %v, want %q", c.line, err, c.want)
		}
	}
	// In the middle: the stray line is line 300.
	lines := strings.SplitAfter(string(shipped), "\n")
	p := writeFile(t, "mtad.yaml", strings.Join(lines[:299], "")+" x: 1\n"+strings.Join(lines[299:], ""))
	if _, err := Load(p); err == nil || !strings.HasSuffix(err.Error(), "YAML syntax: line 300: did not find expected key") {
		t.Errorf("line 300 inserted: %v", err)
	}
}

// TestEnvEmptyClears: an explicitly empty MTAD_* variable clears a string
// key (or a list) set in the file, as systemd's Environment=KEY= means;
// for a number it is refused naming the variable; an empty variable named
// after a section (mtactl's MTAD_ADMIN) changes nothing.
func TestEnvEmptyClears(t *testing.T) {
	// t.Setenv: not parallel.
	rules := writeFile(t, "rules.yaml", "rules: []\n")
	p := writeFile(t, "c.yaml", "response_rules_file: "+rules+"\ninject:\n  smtp:\n    relay_networks: [10.0.0.0/8]\nadmin:\n  listen: 127.0.0.1:9025\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.ResponseRulesFile != rules {
		t.Fatalf("response_rules_file = %q before the override", c.ResponseRulesFile)
	}
	t.Setenv("MTAD_RESPONSE_RULES_FILE", "")
	t.Setenv("MTAD_INJECT_SMTP_RELAY_NETWORKS", "")
	t.Setenv("MTAD_ADMIN", "")
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.ResponseRulesFile != "" || len(c.Inject.SMTP.RelayNetworks) != 0 {
		t.Errorf("response_rules_file %q, relay_networks %q; want both cleared", c.ResponseRulesFile, c.Inject.SMTP.RelayNetworks)
	}
	if c.Admin.Listen != "127.0.0.1:9025" {
		t.Errorf("admin.listen = %q: an empty MTAD_ADMIN changed the admin section", c.Admin.Listen)
	}
	// Nor does a set one: MTAD_ADMIN is mtactl's address, not a key.
	t.Setenv("MTAD_ADMIN", "127.0.0.1:8025")
	if c, err = Load(p); err != nil || c.Admin.Listen != "127.0.0.1:9025" || c.Admin.ReadTimeout == 0 {
		t.Errorf("with MTAD_ADMIN set: %+v, %v; want the file's admin section", c, err)
	}
	t.Setenv("MTAD_ADMIN", "")
	t.Setenv("MTAD_DELIVERY_MAX_CONNECTIONS", "")
	const want = "config: MTAD_DELIVERY_MAX_CONNECTIONS is set but empty: delivery.max_connections takes a number; unset the variable"
	if _, err := Load(p); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load = %v, want %q", err, want)
	}
}
