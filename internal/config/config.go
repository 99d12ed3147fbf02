// Package config owns mtad's configuration: the typed Config struct, the
// default of every key (Default, the one place defaults live), reading a YAML
// file with viper, MTAD_* environment overrides, and validation whose errors
// name the offending key and value.
//
// Keys are lower-case snake_case YAML paths ("inject.smtp.max_sessions").
// Per-domain and per-binding settings are lists of objects ("- match:
// example.com"), never maps keyed by a name, because viper splits map keys on
// dots and a domain name is full of them.
//
// The environment overrides a key by its path upper-cased, dots turned into
// underscores, and prefixed with MTAD_: MTAD_SPOOL_DIR sets spool.dir,
// MTAD_INJECT_SMTP_LISTEN="127.0.0.1:2525,[::1]:2525" sets a list (comma
// separated). Lists of objects (bindings, routes, shaping.domains, ...) and
// hooks.settings can only be set in the file.
//
// Viper is not safe for concurrent use, so Load builds a fresh viper for each
// call and returns a *Config that nobody modifies afterwards: a reload (SIGHUP)
// is another Load whose result the caller swaps in atomically.
//
// This package must never import another mtad package, start goroutines, or
// keep state between calls.
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	yamlv2 "go.yaml.in/yaml/v2"
)

// Config is mtad's whole configuration. A *Config returned by Load or Default
// must be treated as immutable: it may be shared between goroutines, and a
// reload replaces it rather than changing it.
type Config struct {
	// Hostname is the name mtad gives itself: the default EHLO name, the
	// greeting of the injection listener, the Reporting-MTA of bounces.
	Hostname string `mapstructure:"hostname"`
	Spool    Spool  `mapstructure:"spool"`
	Log      Log    `mapstructure:"log"`
	Inject   Inject `mapstructure:"inject"`
	Admin    Admin  `mapstructure:"admin"`
	// Metrics tunes the Prometheus metrics served by the admin listener.
	Metrics Metrics `mapstructure:"metrics"`
	// Bindings are the source addresses mail leaves from. Empty means one
	// binding "default" with the system-chosen source address and EHLO =
	// Hostname.
	Bindings []Binding `mapstructure:"bindings"`
	// BindingGroups name weighted sets of bindings. Without a group named
	// "default", group "default" is every binding with weight 1.
	BindingGroups []BindingGroup `mapstructure:"binding_groups"`
	DNS           DNS            `mapstructure:"dns"`
	// Routes send a domain's mail to a fixed host instead of its MX.
	Routes   []Route  `mapstructure:"routes"`
	Delivery Delivery `mapstructure:"delivery"`
	// Shaping holds the per-scope limits and timings (providers, sites,
	// domains, each narrowable to a binding); internal/policy resolves
	// them for a domain/binding pair.
	Shaping Shaping `mapstructure:"shaping"`
	// TLS holds the outbound TLS checks: extra roots, MTA-STS, DANE.
	TLS     TLS     `mapstructure:"tls"`
	Hooks   Hooks   `mapstructure:"hooks"`
	Runtime Runtime `mapstructure:"runtime"`
	// ResponseRules react to remote replies (see ResponseRule); they come
	// before the rules of ResponseRulesFile, a YAML file holding "rules:"
	// with the same entries ("" = none; read by internal/policy).
	ResponseRules     []ResponseRule `mapstructure:"response_rules"`
	ResponseRulesFile string         `mapstructure:"response_rules_file"`
	// DKIM are the signing keys (see DKIMKey); empty = nothing is signed.
	DKIM []DKIMKey `mapstructure:"dkim"`
	// Cluster shares limits and suspensions with other nodes (cluster.go).
	Cluster Cluster `mapstructure:"cluster"`
}

// Spool configures the durable message store.
type Spool struct {
	// Dir is the directory holding the spool; created if missing.
	Dir string `mapstructure:"dir"`
	// HighWatermark is the number of queued messages at which the
	// injection listeners refuse new mail (SMTP 421 4.3.2 to a new
	// connection, 452 4.3.2 to MAIL; HTTP 503) until the queue falls to
	// LowWatermark. 0 = no limit.
	HighWatermark int64 `mapstructure:"high_watermark"`
	// LowWatermark is where injection resumes; 0 = 90% of HighWatermark.
	LowWatermark int64 `mapstructure:"low_watermark"`
	// MinFree is the free space on the spool's file system below which
	// new mail is refused (452 4.3.1; deliveries go on and free space):
	// room for pebble to start a new WAL and flush a memtable, since a
	// write failing inside a WAL rotation is fatal to pebble. 0 = the
	// spool's default, 2×memtable + 64MiB (192MiB); else at least
	// MinSpoolFree.
	MinFree Size `mapstructure:"min_free"`
}

// MinSpoolFree is the least spool.min_free: one fresh WAL file, which
// pebble preallocates at 110% of the 64 MiB memtable (70.4 MiB), rounded
// up. Below it a WAL rotation with no recycled WAL file to reuse can meet
// a full disk.
const MinSpoolFree = 80 * MiB

// Log configures the process log (internal/logging).
type Log struct {
	Level  string `mapstructure:"level"`  // debug|info|warn|error
	Format string `mapstructure:"format"` // json|console
	File   string `mapstructure:"file"`   // "" = stdout
}

// Inject groups the injection listeners.
type Inject struct {
	SMTP SMTPInject `mapstructure:"smtp"`
	HTTP HTTPInject `mapstructure:"http"`
}

// HTTPInject configures the HTTP injection API (POST /api/v1/messages).
type HTTPInject struct {
	// Listen is the list of host:port addresses to serve on; empty means
	// no HTTP injection.
	Listen []string `mapstructure:"listen"`
	// TokensFile holds the accepted bearer tokens, one a line; "" means no
	// authentication, allowed only on loopback addresses.
	TokensFile     string `mapstructure:"tokens_file"`
	MaxMessageSize Size   `mapstructure:"max_message_size"`
	// MaxRecipients bounds the recipients of one request.
	MaxRecipients int `mapstructure:"max_recipients"`
}

// SMTPInject configures the SMTP injection listener.
type SMTPInject struct {
	// Listen is the list of host:port addresses to accept SMTP on. Empty
	// means no SMTP listener.
	Listen []string `mapstructure:"listen"`
	// RelayNetworks are the CIDRs whose clients may relay without AUTH.
	RelayNetworks  []string `mapstructure:"relay_networks"`
	MaxMessageSize Size     `mapstructure:"max_message_size"`
	MaxRecipients  int      `mapstructure:"max_recipients"`
	MaxSessions    int      `mapstructure:"max_sessions"`
	// TLSCert and TLSKey are PEM files; both or neither. With them the
	// listener offers STARTTLS.
	TLSCert string `mapstructure:"tls_cert"`
	TLSKey  string `mapstructure:"tls_key"`
	// AuthUsersFile is the file of users allowed to AUTH; "" = no AUTH.
	AuthUsersFile string        `mapstructure:"auth_users_file"`
	ReadTimeout   time.Duration `mapstructure:"read_timeout"`
	WriteTimeout  time.Duration `mapstructure:"write_timeout"`
	DataTimeout   time.Duration `mapstructure:"data_timeout"`
	// AuthFailDelay is the pause after a failed AUTH; it grows for a
	// client that keeps failing.
	AuthFailDelay time.Duration `mapstructure:"auth_fail_delay"`
	// ShutdownGrace is how long open sessions get to finish on shutdown.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
	// TLSListen are host:port addresses speaking TLS from the first byte
	// (RFC 8314, port 465 style); they need tls_cert and tls_key.
	TLSListen []string `mapstructure:"tls_listen"`
	// MaxSessionsPerIP bounds one client address's sessions (IPv6: per
	// /64); 0 = no bound.
	MaxSessionsPerIP int `mapstructure:"max_sessions_per_ip"`
	// MaxSessionTime bounds a session's life; 0 = no bound.
	MaxSessionTime time.Duration `mapstructure:"max_session_time"`
	// MaxCommands bounds the commands of one session; 0 = no bound.
	MaxCommands int `mapstructure:"max_commands"`
	// MaxAuthChecks bounds concurrent password checks; 0 = number of CPUs.
	MaxAuthChecks int `mapstructure:"max_auth_checks"`
	// MaxReceivedHeaders: more Received fields than this is a mail loop.
	MaxReceivedHeaders int `mapstructure:"max_received_headers"`
	// AllowAddressLiterals accepts recipients like user@[192.0.2.1].
	AllowAddressLiterals bool `mapstructure:"allow_address_literals"`
	// LongLines is "convert" (make lines over 998 octets conformant) or
	// "reject" (554 5.6.0).
	LongLines string `mapstructure:"long_lines"`
}

// Runtime tunes the Go runtime the daemon runs on. It is read at start
// only; a reload does not change it.
type Runtime struct {
	// GCPercent is the garbage collector's target (the GOGC value): the heap
	// may grow this many percent over the live heap between collections.
	// The daemon allocates per SMTP command and per message, so a higher
	// value trades memory for CPU. -1 turns the collector off (never do
	// that without MemoryLimit). The GOGC environment variable, when set,
	// wins over this key.
	GCPercent int `mapstructure:"gc_percent"`
	// MemoryLimit is a soft limit on the process's memory (GOMEMLIMIT):
	// near it the collector runs as often as it must, whatever GCPercent
	// says. 0 = no limit. The GOMEMLIMIT environment variable wins.
	MemoryLimit Size `mapstructure:"memory_limit"`
}

// Admin configures the admin HTTP API and metrics.
type Admin struct {
	Listen string `mapstructure:"listen"` // host:port
	// TokensFile holds the bearer tokens the admin API accepts, one a
	// line ("name:token" or "token"); "" = no tokens, allowed only on a
	// loopback Listen. With a file, every request needs a token, on
	// loopback too. Re-read on SIGHUP.
	TokensFile string `mapstructure:"tokens_file"`
	// Pprof serves Go's profiler under /debug/pprof/; off by default, as
	// a profile shows the process's internals to whoever asks.
	Pprof bool `mapstructure:"pprof"`
	// ReadTimeout bounds reading a request, headers and body.
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
	// WriteTimeout bounds writing an answer (a CPU profile or a trace
	// gets its duration on top).
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	// IdleTimeout is how long a kept-alive connection may wait for its
	// next request.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
}

// Metrics tunes the Prometheus metrics.
type Metrics struct {
	// TopDomains is how many destination domains, the busiest by recent
	// volume, get per-domain series of their own; the others count under
	// domain="other", so the number of series stays bounded.
	TopDomains int `mapstructure:"top_domains"`
}

// maxTopDomains bounds metrics.top_domains: each labelled domain costs a
// few series in every scrape, and a dashboard's top list is read by people.
const maxTopDomains = 1000

// Binding is one source address with its EHLO name.
type Binding struct {
	Name string `mapstructure:"name"`
	// Address is an IPv4 or IPv6 address on this host; "" lets the system
	// choose the source address.
	Address string `mapstructure:"address"`
	// EHLO is the name said in EHLO from this binding; "" = Hostname.
	EHLO string `mapstructure:"ehlo"`
}

// BindingGroup is a named, weighted set of bindings.
type BindingGroup struct {
	Name     string        `mapstructure:"name"`
	Bindings []GroupMember `mapstructure:"bindings"`
}

// GroupMember is one binding of a group. Weight defaults to 1 when the key is
// absent; an explicit weight must be at least 1.
type GroupMember struct {
	Name   string `mapstructure:"name"`
	Weight int    `mapstructure:"weight"`
}

// DNS configures the resolver used for MX lookups.
type DNS struct {
	// Servers are host:port; empty = the servers of /etc/resolv.conf.
	Servers []string      `mapstructure:"servers"`
	Timeout time.Duration `mapstructure:"timeout"`
	// CacheSize bounds the domains whose answers are cached; at least 1.
	CacheSize int `mapstructure:"cache_size"`
	// MaxMXHosts, MaxAddressesPerHost and MaxAddresses bound what one
	// resolution fans out to: the MX hosts resolved (lowest preference
	// first), the addresses kept per host, and the addresses one delivery
	// attempt may try over all hosts (Postfix's smtp_mx_address_limit).
	MaxMXHosts          int `mapstructure:"max_mx_hosts"`
	MaxAddressesPerHost int `mapstructure:"max_addresses_per_host"`
	MaxAddresses        int `mapstructure:"max_addresses"`
}

// Route sends mail for Domain to Host (host:port) instead of its MX hosts.
type Route struct {
	Domain string `mapstructure:"domain"`
	Host   string `mapstructure:"host"`
}

// Delivery configures outbound delivery.
type Delivery struct {
	// Port is the remote SMTP port (25; a test or a smarthost may differ).
	Port int `mapstructure:"port"`
	// AllowLoopbackMX permits MX hosts that resolve to loopback addresses;
	// off in production so a bad MX can't make mtad mail itself.
	AllowLoopbackMX bool `mapstructure:"allow_loopback_mx"`
	// AllowedNetworks are CIDR prefixes whose addresses mtad may deliver to
	// although they are prohibited MX addresses (private, shared,
	// documentation, reserved, ...: internal/mx), e.g. a recipient domain
	// hosted on the sender's own private network. Static routes need no
	// entry here: a route is already the operator's explicit choice.
	AllowedNetworks []string `mapstructure:"allowed_networks"`
	// MaxConnections is the global cap on open outbound connections.
	MaxConnections int `mapstructure:"max_connections"`
	// Reserve is the part of MaxConnections the default policy leaves to hooks.
	Reserve          int           `mapstructure:"reserve"`
	MaintainInterval time.Duration `mapstructure:"maintain_interval"`
	// RetryInterval is the first retry delay; it grows up to MaxRetryInterval.
	RetryInterval    time.Duration `mapstructure:"retry_interval"`
	MaxRetryInterval time.Duration `mapstructure:"max_retry_interval"`
	// MaxAge is how long a message is retried before it expires.
	MaxAge time.Duration `mapstructure:"max_age"`
	// DelayWarning is how long after reception a recipient still pending
	// gets one delay DSN (RFC 3464 Action: delayed), when its NOTIFY asked
	// for DELAY; 0 turns delay DSNs off. It is less than MaxAge, else the
	// message expires first and the warning never goes out.
	DelayWarning time.Duration `mapstructure:"delay_warning"`
	// IdleTimeout is how long a session with an empty queue waits for more
	// work before it QUITs.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// TLS is the default TLS policy of every destination, one of
	// TLSModes; a shaping scope's tls: overrides it.
	TLS string `mapstructure:"tls"`
	// TLSFailureTTL is how long a host whose TLS handshake failed is
	// contacted without STARTTLS.
	TLSFailureTTL time.Duration `mapstructure:"tls_failure_ttl"`
	// Chunking sends a message with BDAT (RFC 3030) when the server offers
	// CHUNKING and PIPELINING: MAIL, RCPT, BDAT and the body in one write,
	// one round trip instead of DATA's two. false keeps to DATA.
	Chunking bool `mapstructure:"chunking"`
	// BounceClassesFile is a YAML file of bounce classification rules
	// (internal/policy; configs/bounce-classes.yaml is an example) tried
	// before the built-in ones; "" = the built-in rules only. It is read
	// and checked at start and again on SIGHUP.
	BounceClassesFile string   `mapstructure:"bounce_classes_file"`
	Timeouts          Timeouts `mapstructure:"timeouts"`
}

// Timeouts are the per-phase deadlines of an outbound SMTP session.
type Timeouts struct {
	Connect   time.Duration `mapstructure:"connect"`
	Greeting  time.Duration `mapstructure:"greeting"`
	EHLO      time.Duration `mapstructure:"ehlo"`
	STARTTLS  time.Duration `mapstructure:"starttls"`
	Mail      time.Duration `mapstructure:"mail"`
	Rcpt      time.Duration `mapstructure:"rcpt"`
	DataInit  time.Duration `mapstructure:"data_init"`
	DataBlock time.Duration `mapstructure:"data_block"`
	DataTerm  time.Duration `mapstructure:"data_term"`
	Quit      time.Duration `mapstructure:"quit"`
	// Transaction bounds a whole transaction (MAIL to the reply after the
	// dot) on top of the per-command limits, and likewise one connection
	// attempt over all of a domain's MX addresses.
	Transaction time.Duration `mapstructure:"transaction"`
}

// Hooks configures the hook plugins.
type Hooks struct {
	// Plugins are the plugins to load, in registration order.
	Plugins []string `mapstructure:"plugins"`
	// Settings maps a plugin name to its own settings. Each value must be a
	// map; its content is checked by the plugin, not here. Viper lower-cases
	// every key, so plugins must expect lower-case keys.
	Settings map[string]any `mapstructure:"settings"`
}

// Default returns the configuration with every key at its default. This is
// the one place defaults are written; Load registers them with viper from
// here, so a key missing from the file or the environment keeps this value.
func Default() *Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return &Config{
		Hostname: host,
		Spool:    Spool{Dir: "./var/spool", HighWatermark: 400000},
		Log:      Log{Level: "info", Format: "json", File: ""},
		Inject: Inject{SMTP: SMTPInject{
			Listen:         []string{"127.0.0.1:2525"},
			RelayNetworks:  []string{"127.0.0.0/8", "::1/128"},
			MaxMessageSize: 25 * MiB,
			MaxRecipients:  1000,
			MaxSessions:    500,
			ReadTimeout:    60 * time.Second,
			WriteTimeout:   60 * time.Second,
			DataTimeout:    5 * time.Minute,
			AuthFailDelay:  time.Second,
			ShutdownGrace:  30 * time.Second,
			TLSListen:      []string{},

			MaxSessionsPerIP:   100,
			MaxSessionTime:     time.Hour,
			MaxCommands:        10000,
			MaxAuthChecks:      0,
			MaxReceivedHeaders: 50,
			LongLines:          "convert",
		},
			HTTP: HTTPInject{Listen: []string{}, MaxMessageSize: 25 * MiB, MaxRecipients: 10000},
		},
		Admin: Admin{Listen: "127.0.0.1:8025", ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute},
		Metrics: Metrics{TopDomains: 20},
		DNS: DNS{Servers: []string{}, Timeout: 5 * time.Second, CacheSize: 10000,
			MaxMXHosts: 10, MaxAddressesPerHost: 4, MaxAddresses: 10},
		Delivery: Delivery{
			Port:             25,
			AllowLoopbackMX:  false,
			AllowedNetworks:  []string{},
			MaxConnections:   1000,
			Reserve:          50,
			MaintainInterval: time.Second,
			RetryInterval:    5 * time.Minute,
			MaxRetryInterval: 4 * time.Hour,
			MaxAge:           120 * time.Hour,
			DelayWarning:     4 * time.Hour,
			IdleTimeout:      5 * time.Second,
			TLS:              "opportunistic",
			TLSFailureTTL:    time.Hour,
			Chunking:         true,
			Timeouts: Timeouts{
				Connect:     30 * time.Second,
				Greeting:    5 * time.Minute,
				EHLO:        5 * time.Minute,
				STARTTLS:    5 * time.Minute,
				Mail:        5 * time.Minute,
				Rcpt:        5 * time.Minute,
				DataInit:    2 * time.Minute,
				DataBlock:   3 * time.Minute,
				DataTerm:    10 * time.Minute,
				Quit:        time.Minute,
				Transaction: 10 * time.Minute,
			},
		},
		Shaping: defaultShaping(),
		TLS:     TLS{MTASTS: true},
		Hooks:   Hooks{Plugins: []string{"accounting"}, Settings: map[string]any{}},
		Runtime: Runtime{GCPercent: 400},
		Cluster: defaultCluster(),
	}
}

// Load reads the YAML file at path over the defaults, applies MTAD_*
// environment overrides, and validates the result. path "" means defaults
// plus environment only. Unknown keys are errors naming the key; so is every
// invalid value (see Validate). Each call uses its own viper instance, so
// Load may run concurrently with readers of an earlier *Config.
func Load(path string) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix("MTAD")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	// Each leaf key is bound to its variable (registerDefaults), not
	// viper.AutomaticEnv: that one also takes a variable named after a
	// section as the whole section's value, so MTAD_ADMIN (mtactl's
	// address, often exported in the operator's shell) emptied every
	// admin.* key.
	registerDefaults(v, "", reflect.ValueOf(*Default()))
	if err := setEmptyEnv(v, "", reflect.ValueOf(*Default())); err != nil {
		return nil, err
	}

	where := "environment"
	if path != "" {
		where = path
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return nil, readError(path, err)
		}
		// Refused by name, not as an unknown key, so an operator with
		// an old file learns where the entries went.
		if v.InConfig("domains") {
			return nil, fmt.Errorf("config: %s: %s", path, movedDomains)
		}
	}

	var c Config
	err := v.UnmarshalExact(&c, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		memberWeightHook(),
		stringToSliceHook(),
		durationHook(),
		sizeHook(),
	)))
	if err != nil {
		return nil, decodeError(where, err)
	}
	c.normalize()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// registerDefaults walks the default Config and gives viper every leaf key
// with its default value and binds it to its MTAD_* variable. Registering
// each key matters twice over: viper only consults the environment for the
// keys bound, and the decoder starts from a
// zero Config, so an unregistered key would silently become zero.
func registerDefaults(v *viper.Viper, prefix string, val reflect.Value) {
	t := val.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		fv := val.Field(i)
		switch {
		case fv.Kind() == reflect.Struct:
			registerDefaults(v, key, fv)
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct,
			fv.Kind() == reflect.Map:
			// Lists of objects and free-form maps default to empty and
			// are only set from the file; a nil default keeps viper from
			// treating them as nested keys.
		case fv.Kind() == reflect.Pointer:
			// An optional key (shaping): nil is unset, which viper
			// must not see as a value; BindEnv still lets MTAD_*
			// set it.
			if fv.IsNil() {
				_ = v.BindEnv(key)
			} else {
				v.SetDefault(key, fv.Elem().Interface())
				_ = v.BindEnv(key)
			}
		default:
			v.SetDefault(key, fv.Interface())
			_ = v.BindEnv(key) // MTAD_ + the key upper-cased, dots as underscores
		}
	}
}

// readError is ReadInConfig's error, with a YAML syntax error's line made
// the line at fault. yaml.v3 (viper's parser) reports the line where the
// enclosing block starts when it has one, not where the parser stopped: a
// stray " x: 1" appended at line 579 of the shipped file is "line 15: did
// not find expected key", line 15 being where the top-level mapping starts
// (go.yaml.in/yaml/v3 decode.go, parser.fail, prefers context_mark over
// problem_mark). yaml.v2, the same libyaml port, prefers the problem's
// mark, so the file is parsed again with it to name the line; v2 counts
// that mark from 0 for a parser error (it adds 1 only to a scanner
// error's), which v2Line corrects. Should v2 accept what v3 refused, v3's
// error is given as it is.
func readError(path string, err error) error {
	var pe viper.ConfigParseError
	if !errors.As(err, &pe) {
		return fmt.Errorf("config: read %s: %w", path, err)
	}
	if b, rerr := os.ReadFile(path); rerr == nil {
		var doc any
		if yerr := yamlv2.Unmarshal(b, &doc); yerr != nil {
			return fmt.Errorf("config: %s: YAML syntax: %s", path, v2Line(strings.TrimPrefix(yerr.Error(), "yaml: ")))
		}
	}
	return fmt.Errorf("config: %s: YAML syntax: %s", path, strings.TrimPrefix(errors.Unwrap(pe).Error(), "yaml: "))
}

// yamlParserProblems are the problems libyaml's parser (not its scanner)
// reports, from go.yaml.in/yaml/v2's parserc.go: their line is counted
// from 0 in v2's message.
var yamlParserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// v2Line turns yaml.v2's "line N: problem" into the 1-based line.
func v2Line(msg string) string {
	rest, ok := strings.CutPrefix(msg, "line ")
	if !ok {
		return msg
	}
	num, problem, ok := strings.Cut(rest, ": ")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || !yamlParserProblems[problem] {
		return msg
	}
	return fmt.Sprintf("line %d: %s", n+1, problem)
}

// setEmptyEnv gives every string key whose MTAD_* variable is set but
// empty the value "" (and every list of strings the empty list), over the
// file's: systemd's Environment=MTAD_RESPONSE_RULES_FILE= means "none",
// while viper by default takes an empty variable for an unset one and
// keeps the file's value. viper's AllowEmptyEnv would do it for all keys
// at once, but it also lets an empty variable named after a section
// (MTAD_ADMIN=, which is mtactl's) hide that whole section's keys. An
// empty variable for any other kind of key (a number, a duration, a
// switch) has no meaning and is refused naming the variable and the key.
func setEmptyEnv(v *viper.Viper, prefix string, val reflect.Value) error {
	t := val.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		fv := val.Field(i)
		if fv.Kind() == reflect.Struct {
			if err := setEmptyEnv(v, key, fv); err != nil {
				return err
			}
			continue
		}
		env := "MTAD_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if s, ok := os.LookupEnv(env); !ok || s != "" {
			continue
		}
		ft := fv.Type()
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.String:
			v.Set(key, "")
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.String:
			v.Set(key, []string{})
		default:
			return fmt.Errorf("config: %s is set but empty: %s takes %s; unset the variable to keep the file's value", env, key, valueWords(ft))
		}
	}
	return nil
}

// valueWords says what a key of type t takes, for an error message.
func valueWords(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration (e.g. \"30s\")"
	case t == reflect.TypeFor[Size]():
		return "a size (e.g. \"25MiB\")"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Float64:
		return "a number"
	}
	return "a value"
}

// normalize gives every absent or empty list one representation: plain
// lists are empty and non-nil, lists of objects are nil.
func (c *Config) normalize() {
	if c.Inject.SMTP.Listen == nil {
		c.Inject.SMTP.Listen = []string{}
	}
	if c.Inject.SMTP.TLSListen == nil {
		c.Inject.SMTP.TLSListen = []string{}
	}
	if c.Inject.SMTP.RelayNetworks == nil {
		c.Inject.SMTP.RelayNetworks = []string{}
	}
	if c.DNS.Servers == nil {
		c.DNS.Servers = []string{}
	}
	if c.Delivery.AllowedNetworks == nil {
		c.Delivery.AllowedNetworks = []string{}
	}
	if c.Cluster.Redis == nil {
		c.Cluster.Redis = []string{}
	}
	if c.Hooks.Plugins == nil {
		c.Hooks.Plugins = []string{}
	}
	if c.Hooks.Settings == nil {
		c.Hooks.Settings = map[string]any{}
	}
	// An empty list in the file and an absent one mean the same: nil.
	if len(c.Bindings) == 0 {
		c.Bindings = nil
	}
	if len(c.BindingGroups) == 0 {
		c.BindingGroups = nil
	}
	if len(c.Routes) == 0 {
		c.Routes = nil
	}
	if len(c.ResponseRules) == 0 {
		c.ResponseRules = nil
	}
	// Domain names compare case-insensitively and may be written with the
	// root's trailing dot; consumers get one spelling.
	for i := range c.Routes {
		c.Routes[i].Domain = strings.TrimSuffix(strings.ToLower(c.Routes[i].Domain), ".")
	}
	c.Shaping.normalize()
	c.normalizeDKIM()
}

// decodeError rewrites mapstructure's errors into one line per problem, each
// naming the full key: "config: f.yaml: unknown key inject.smtp.max_sesions".
func decodeError(where string, err error) error {
	var lines []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		de, ok := e.(*mapstructure.DecodeError)
		if !ok {
			// mapstructure wraps its joined errors in one fmt.Errorf
			// ("decoding failed due to ..."): look through it.
			if inner := errors.Unwrap(e); inner != nil {
				walk(inner)
				return
			}
		}
		if ok {
			inner := de.Unwrap()
			if _, ok := inner.(interface{ Unwrap() []error }); ok {
				walk(inner)
				return
			}
			if keys, ok := strings.CutPrefix(inner.Error(), "has invalid keys: "); ok {
				for _, k := range strings.Split(keys, ", ") {
					if de.Name() != "" {
						k = de.Name() + "." + k
					}
					lines = append(lines, fmt.Errorf("config: %s: unknown key %s", where, k))
				}
				return
			}
			var pe *mapstructure.ParseError
			var ue *mapstructure.UnconvertibleTypeError
			switch {
			case errors.As(inner, &pe):
				lines = append(lines, fmt.Errorf("config: %s: %s: %s is not a valid %s", where, de.Name(), quote(pe.Value), pe.Expected.Type()))
			case errors.As(inner, &ue):
				lines = append(lines, fmt.Errorf("config: %s: %s: %s is not a valid %s", where, de.Name(), quote(ue.Value), ue.Expected.Type()))
			default:
				lines = append(lines, fmt.Errorf("config: %s: %s: %w", where, de.Name(), inner))
			}
			return
		}
		lines = append(lines, fmt.Errorf("config: %s: %w", where, e))
	}
	walk(err)
	if len(lines) == 0 {
		return fmt.Errorf("config: %s: %w", where, err)
	}
	return errors.Join(lines...)
}

// stringToSliceHook splits a string (from the environment) into a list at
// commas, trimming blanks, so MTAD_DNS_SERVERS="a:53, b:53" is two servers.
func stringToSliceHook() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
			return data, nil
		}
		out := []string{}
		for _, s := range strings.Split(data.(string), ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
}

// memberWeightHook gives a group member without a weight key the weight 1,
// while an explicit weight (even 0) is kept for Validate to judge.
func memberWeightHook() mapstructure.DecodeHookFuncType {
	memberType := reflect.TypeFor[GroupMember]()
	return func(from, to reflect.Type, data any) (any, error) {
		if to != memberType {
			return data, nil
		}
		m, ok := data.(map[string]any)
		if !ok {
			return data, nil
		}
		if _, set := m["weight"]; set {
			return data, nil
		}
		out := make(map[string]any, len(m)+1)
		for k, v := range m {
			out[k] = v
		}
		out["weight"] = 1
		return out, nil
	}
}

// sizeHook decodes a Size from a byte count or a string such as "25MiB".
func sizeHook() mapstructure.DecodeHookFuncType {
	sizeType := reflect.TypeFor[Size]()
	return func(from, to reflect.Type, data any) (any, error) {
		if to != sizeType {
			return data, nil
		}
		switch from.Kind() {
		case reflect.String:
			return ParseSize(data.(string))
		case reflect.Float32, reflect.Float64:
			f := reflect.ValueOf(data).Float()
			if f != float64(int64(f)) {
				return nil, fmt.Errorf("%v is not a whole number of bytes", data)
			}
			return Size(int64(f)), nil
		}
		return data, nil
	}
}

// quote renders a bad value for an error message: strings quoted, the rest
// as Go prints them.
func quote(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%v", v)
}

// durationHook decodes a time.Duration from a Go duration string, naming the
// bad value on failure (mapstructure's own hook drops it).
func durationHook() mapstructure.DecodeHookFuncType {
	durType := reflect.TypeFor[time.Duration]()
	return func(from, to reflect.Type, data any) (any, error) {
		if to != durType || from == durType {
			return data, nil
		}
		switch from.Kind() {
		case reflect.String:
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
			reflect.Float32, reflect.Float64:
			// A bare number would silently mean nanoseconds.
			if reflect.ValueOf(data).IsZero() {
				return time.Duration(0), nil
			}
			return nil, fmt.Errorf("%v needs a unit (write e.g. \"30s\", \"5m\", \"120h\")", data)
		default:
			return data, nil
		}
		d, err := time.ParseDuration(strings.TrimSpace(data.(string)))
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration (write e.g. \"30s\", \"5m\", \"120h\")", data)
		}
		return d, nil
	}
}
