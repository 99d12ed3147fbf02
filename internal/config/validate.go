package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// FieldError is one invalid value, naming its key as written in the file
// (list elements by index: "bindings[2].address").
type FieldError struct {
	Key string
	Msg string // names the bad value, e.g. `"10.0.0/8" is not a CIDR`
}

func (e *FieldError) Error() string { return "config: " + e.Key + ": " + e.Msg }

// validator collects every problem rather than stopping at the first, so an
// operator fixes a config in one pass.
type validator struct{ errs []error }

func (v *validator) bad(key, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks every key and returns nil or the errors.Join of one
// *FieldError per problem. Load calls it; call it yourself on a Config built
// or changed in code. It reads the TLS and AUTH files named by the config to
// check they exist and parse.
func (c *Config) Validate() error {
	v := &validator{}
	if !validDomain(c.Hostname) {
		v.bad("hostname", "%q is not a valid host name", c.Hostname)
	}
	if c.Spool.Dir == "" {
		v.bad("spool.dir", "must not be empty")
	}
	if c.Spool.HighWatermark < 0 {
		v.bad("spool.high_watermark", "%d must be >= 0 (0 = no limit)", c.Spool.HighWatermark)
	}
	if m := c.Spool.MinFree; m != 0 && m < MinSpoolFree {
		v.bad("spool.min_free", "%s is below the least, %s (a fresh WAL file: 110%% of the 64MiB memtable); 0 = the default, 192MiB",
			m, MinSpoolFree)
	}
	if c.Spool.LowWatermark < 0 || (c.Spool.LowWatermark > 0 && c.Spool.LowWatermark >= c.Spool.HighWatermark) {
		v.bad("spool.low_watermark", "%d must be >= 0 and below spool.high_watermark (%d); 0 = 90%% of it",
			c.Spool.LowWatermark, c.Spool.HighWatermark)
	}
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "console")

	c.validateInject(v)
	if c.Metrics.TopDomains < 1 || c.Metrics.TopDomains > maxTopDomains {
		v.bad("metrics.top_domains", "%d is not in 1-%d", c.Metrics.TopDomains, maxTopDomains)
	}
	if c.Runtime.GCPercent < -1 {
		v.bad("runtime.gc_percent", "%d is below -1 (-1 turns the collector off)", c.Runtime.GCPercent)
	}
	if c.Runtime.GCPercent == -1 && c.Runtime.MemoryLimit == 0 {
		v.bad("runtime.gc_percent", "-1 (collector off) needs runtime.memory_limit, or the heap grows without bound")
	}
	if c.Runtime.MemoryLimit < 0 {
		v.bad("runtime.memory_limit", "%d is negative", c.Runtime.MemoryLimit)
	}
	c.validateAdmin(v)
	c.validateBindings(v)

	for i, s := range c.DNS.Servers {
		v.hostPort(fmt.Sprintf("dns.servers[%d]", i), s, false)
	}
	v.positive("dns.timeout", c.DNS.Timeout)
	// The resolver cannot run without its cache (every tick would ask the
	// DNS again), so 0 is refused rather than read as "off" or "default".
	if c.DNS.CacheSize < 1 {
		v.bad("dns.cache_size", "%d: must be at least 1 (default 10000)", c.DNS.CacheSize)
	}
	// 0 is refused, not taken as "no limit": the unbounded fan-out is what
	// these keys exist to stop. 100 is far beyond any real domain's need.
	for _, b := range []struct {
		key string
		n   int
	}{
		{"dns.max_mx_hosts", c.DNS.MaxMXHosts},
		{"dns.max_addresses_per_host", c.DNS.MaxAddressesPerHost},
		{"dns.max_addresses", c.DNS.MaxAddresses},
	} {
		if b.n < 1 || b.n > 100 {
			v.bad(b.key, "%d is not in 1-100", b.n)
		}
	}

	seenRoute := map[string]bool{}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if !validDomain(r.Domain) {
			v.bad(key+".domain", "%q is not a domain name", r.Domain)
		} else if seenRoute[strings.ToLower(r.Domain)] {
			v.bad(key+".domain", "%q is routed twice", r.Domain)
		}
		seenRoute[strings.ToLower(r.Domain)] = true
		v.hostPort(key+".host", r.Host, false)
	}

	c.validateDelivery(v)
	c.validateShaping(v)
	c.validateDANE(v)
	c.validateTLS(v)
	c.validateResponseRules(v)
	c.validateDKIM(v)
	c.validateCluster(v)

	seenPlugin := map[string]bool{}
	for i, p := range c.Hooks.Plugins {
		key := fmt.Sprintf("hooks.plugins[%d]", i)
		switch {
		case strings.TrimSpace(p) == "":
			v.bad(key, "must not be empty")
		case seenPlugin[p]:
			v.bad(key, "%q is listed twice", p)
		}
		seenPlugin[p] = true
	}
	for name, s := range c.Hooks.Settings {
		if _, ok := s.(map[string]any); !ok {
			v.bad("hooks.settings."+name, "must be a map of settings, not %T", s)
		}
	}
	return errors.Join(v.errs...)
}

func (c *Config) validateAdmin(v *validator) {
	a := c.Admin
	n := len(v.errs)
	v.hostPort("admin.listen", a.Listen, true)
	if len(v.errs) == n && a.TokensFile == "" && !LoopbackListen(a.Listen) {
		v.bad("admin.listen", "%q is not a loopback address, so admin.tokens_file must name a tokens file: "+
			"without one anyone who reaches the port could suspend, bounce and read mail", a.Listen)
	}
	if a.TokensFile != "" {
		if fi, err := os.Stat(a.TokensFile); err != nil {
			v.bad("admin.tokens_file", "%q: %v", a.TokensFile, err)
		} else if !fi.Mode().IsRegular() {
			v.bad("admin.tokens_file", "%q is not a regular file", a.TokensFile)
		}
	}
	v.positive("admin.read_timeout", a.ReadTimeout)
	v.positive("admin.write_timeout", a.WriteTimeout)
	v.positive("admin.idle_timeout", a.IdleTimeout)
}

// LoopbackListen reports whether the listen address addr ("host:port")
// can only be reached from this host: its host is a loopback IP
// (127.0.0.0/8, ::1) or "localhost". An empty host, 0.0.0.0, :: and any
// other name are not: a name is not resolved here, so one that happens to
// point at loopback still counts as reachable from outside.
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func (c *Config) validateInject(v *validator) {
	c.validateHTTPInject(v)
	s := c.Inject.SMTP
	const p = "inject.smtp."
	for i, a := range s.Listen {
		v.hostPort(fmt.Sprintf(p+"listen[%d]", i), a, true)
	}
	for i, n := range s.RelayNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			v.bad(fmt.Sprintf(p+"relay_networks[%d]", i), "%q is not a CIDR", n)
		}
	}
	if s.MaxMessageSize <= 0 {
		v.bad(p+"max_message_size", "%d must be positive", s.MaxMessageSize)
	}
	if s.MaxRecipients < 1 {
		v.bad(p+"max_recipients", "%d must be at least 1", s.MaxRecipients)
	}
	if s.MaxSessions < 1 {
		v.bad(p+"max_sessions", "%d must be at least 1", s.MaxSessions)
	}
	switch {
	case s.TLSCert == "" && s.TLSKey == "":
	case s.TLSCert == "":
		v.bad(p+"tls_cert", "must be set when tls_key is (%q)", s.TLSKey)
	case s.TLSKey == "":
		v.bad(p+"tls_key", "must be set when tls_cert is (%q)", s.TLSCert)
	default:
		if _, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey); err != nil {
			v.bad(p+"tls_cert", "%q with key %q: %v", s.TLSCert, s.TLSKey, err)
		}
	}
	if s.AuthUsersFile != "" {
		if fi, err := os.Stat(s.AuthUsersFile); err != nil {
			v.bad(p+"auth_users_file", "%q: %v", s.AuthUsersFile, err)
		} else if !fi.Mode().IsRegular() {
			v.bad(p+"auth_users_file", "%q is not a regular file", s.AuthUsersFile)
		}
	}
	v.positive(p+"read_timeout", s.ReadTimeout)
	v.positive(p+"write_timeout", s.WriteTimeout)
	v.positive(p+"data_timeout", s.DataTimeout)
	v.nonNegative(p+"auth_fail_delay", s.AuthFailDelay)
	v.nonNegative(p+"shutdown_grace", s.ShutdownGrace)
	for i, a := range s.TLSListen {
		v.hostPort(fmt.Sprintf(p+"tls_listen[%d]", i), a, true)
	}
	if len(s.TLSListen) > 0 && s.TLSCert == "" {
		v.bad(p+"tls_listen", "needs tls_cert and tls_key")
	}
	if s.MaxSessionsPerIP < 0 {
		v.bad(p+"max_sessions_per_ip", "%d must not be negative", s.MaxSessionsPerIP)
	}
	v.nonNegative(p+"max_session_time", s.MaxSessionTime)
	if s.MaxCommands < 0 {
		v.bad(p+"max_commands", "%d must not be negative", s.MaxCommands)
	}
	if s.MaxAuthChecks < 0 {
		v.bad(p+"max_auth_checks", "%d must not be negative", s.MaxAuthChecks)
	}
	if s.MaxReceivedHeaders < 1 {
		v.bad(p+"max_received_headers", "%d must be at least 1", s.MaxReceivedHeaders)
	}
	if s.LongLines != "convert" && s.LongLines != "reject" {
		v.bad(p+"long_lines", "%q must be convert or reject", s.LongLines)
	}
}

func (c *Config) validateBindings(v *validator) {
	known := map[string]bool{}
	for i, b := range c.Bindings {
		key := fmt.Sprintf("bindings[%d]", i)
		switch {
		case !validName(b.Name):
			v.bad(key+".name", "%q is not a valid name (letters, digits, '.', '_', '-')", b.Name)
		case known[b.Name]:
			v.bad(key+".name", "%q is defined twice", b.Name)
		}
		known[b.Name] = true
		if b.Address != "" {
			if _, err := netip.ParseAddr(b.Address); err != nil {
				v.bad(key+".address", "%q is not an IPv4 or IPv6 address", b.Address)
			}
		}
		if b.EHLO != "" && !validDomain(b.EHLO) {
			v.bad(key+".ehlo", "%q is not a valid host name", b.EHLO)
		}
	}
	if len(c.Bindings) == 0 {
		// The implicit binding, so groups may name it.
		known["default"] = true
	}
	groups := map[string]bool{}
	for i, g := range c.BindingGroups {
		key := fmt.Sprintf("binding_groups[%d]", i)
		switch {
		case !validName(g.Name):
			v.bad(key+".name", "%q is not a valid name (letters, digits, '.', '_', '-')", g.Name)
		case groups[g.Name]:
			v.bad(key+".name", "%q is defined twice", g.Name)
		}
		groups[g.Name] = true
		if len(g.Bindings) == 0 {
			v.bad(key+".bindings", "group %q has no bindings", g.Name)
		}
		members := map[string]bool{}
		for j, m := range g.Bindings {
			mkey := fmt.Sprintf("%s.bindings[%d]", key, j)
			switch {
			case !known[m.Name]:
				v.bad(mkey+".name", "%q is not a binding", m.Name)
			case members[m.Name]:
				v.bad(mkey+".name", "%q is in group %q twice", m.Name, g.Name)
			}
			members[m.Name] = true
			if m.Weight < 1 {
				v.bad(mkey+".weight", "%d must be at least 1", m.Weight)
			}
		}
	}
}

func (c *Config) validateDelivery(v *validator) {
	d := c.Delivery
	const p = "delivery."
	if d.Port < 1 || d.Port > 65535 {
		v.bad(p+"port", "%d is not a port (1-65535)", d.Port)
	}
	if d.MaxConnections < 1 {
		v.bad(p+"max_connections", "%d must be at least 1", d.MaxConnections)
	}
	if d.MaxConnections >= 1 && (d.Reserve < 0 || d.Reserve >= d.MaxConnections) {
		v.bad(p+"reserve", "%d must be at least 0 and less than delivery.max_connections (%d)", d.Reserve, d.MaxConnections)
	}
	v.positive(p+"maintain_interval", d.MaintainInterval)
	v.positive(p+"retry_interval", d.RetryInterval)
	if d.MaxRetryInterval < d.RetryInterval {
		v.bad(p+"max_retry_interval", "%s is less than delivery.retry_interval (%s)", d.MaxRetryInterval, d.RetryInterval)
	}
	v.positive(p+"max_age", d.MaxAge)
	v.nonNegative(p+"delay_warning", d.DelayWarning)
	if d.DelayWarning > 0 && d.MaxAge > 0 && d.DelayWarning >= d.MaxAge {
		v.bad(p+"delay_warning", "%s is not less than delivery.max_age (%s): the message would expire before the warning", d.DelayWarning, d.MaxAge)
	}
	v.nonNegative(p+"idle_timeout", d.IdleTimeout)
	for i, n := range d.AllowedNetworks {
		v.network(fmt.Sprintf(p+"allowed_networks[%d]", i), n)
	}
	v.oneOf(p+"tls", d.TLS, TLSModes...)
	v.nonNegative(p+"tls_failure_ttl", d.TLSFailureTTL)
	t := d.Timeouts
	for _, x := range []struct {
		key string
		d   time.Duration
	}{
		{"connect", t.Connect}, {"greeting", t.Greeting}, {"ehlo", t.EHLO},
		{"starttls", t.STARTTLS}, {"mail", t.Mail}, {"rcpt", t.Rcpt},
		{"data_init", t.DataInit}, {"data_block", t.DataBlock},
		{"data_term", t.DataTerm}, {"quit", t.Quit}, {"transaction", t.Transaction},
	} {
		v.positive(p+"timeouts."+x.key, x.d)
	}
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.bad(key, "%q is not one of %s", val, strings.Join(allowed, "|"))
}

// network checks a CIDR prefix the way mx.ParseNetworks reads it: canonical
// (no host bits set, which is more likely a typo than a wish) and an IPv4
// network in IPv4 form.
func (v *validator) network(key, s string) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	switch {
	case err != nil:
		v.bad(key, "%q is not a CIDR prefix (like 10.0.0.0/8 or fd00::/8)", s)
	case p.Addr().Is4In6():
		v.bad(key, "%q: write an IPv4 network in IPv4 form", s)
	case p.Masked() != p:
		v.bad(key, "%q has host bits set; the network is %s", s, p.Masked())
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.bad(key, "%s must be positive", d)
	}
}

func (v *validator) nonNegative(key string, d time.Duration) {
	if d < 0 {
		v.bad(key, "%s is negative", d)
	}
}

// hostPort checks "host:port". A listen address may use port 0 (the kernel
// picks one: tests rely on it) and an empty host (all addresses).
func (v *validator) hostPort(key, s string, listen bool) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.bad(key, "%q is not host:port", s)
		return
	}
	n, err := strconv.Atoi(port)
	min := 1
	if listen {
		min = 0
	}
	if err != nil || n < min || n > 65535 {
		v.bad(key, "%q has a bad port %q", s, port)
		return
	}
	if host == "" {
		if !listen {
			v.bad(key, "%q has no host", s)
		}
		return
	}
	if _, err := netip.ParseAddr(host); err != nil && !validDomain(host) {
		v.bad(key, "%q: %q is neither an IP address nor a host name", s, host)
	}
}

// validName accepts binding and group names: what is safe in logs, metrics
// labels and URLs.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// validDomain accepts a DNS name of letter-digit-hyphen labels (underscores
// tolerated), with an optional trailing dot.
func validDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// validateDANE refuses DANE without dns.servers: DANE trusts the AD bit of
// a DNSSEC-validating resolver, and the servers of /etc/resolv.conf are
// not known to validate (without them every TLSA lookup would fail and the
// mail in DANE scopes would be deferred until it expires).
func (c *Config) validateDANE(v *validator) {
	if len(c.DNS.Servers) > 0 {
		return
	}
	need := func(key string) {
		v.bad(key, "true needs dns.servers: DANE trusts the AD bit of a DNSSEC-validating resolver, which must be named")
	}
	if c.TLS.DANE {
		need("tls.dane")
	}
	check := func(key string, sv *ShapingValues, ns []BindingShaping) {
		if sv.DANE != nil && *sv.DANE {
			need(key + ".dane")
		}
		for i := range ns {
			if d := ns[i].DANE; d != nil && *d {
				need(fmt.Sprintf("%s.bindings[%d].dane", key, i))
			}
		}
	}
	check("shaping.default", &c.Shaping.Default, nil)
	for i := range c.Shaping.Providers {
		check(fmt.Sprintf("shaping.providers[%d]", i), &c.Shaping.Providers[i].ShapingValues, c.Shaping.Providers[i].Bindings)
	}
	for i := range c.Shaping.Sites {
		check(fmt.Sprintf("shaping.sites[%d]", i), &c.Shaping.Sites[i].ShapingValues, c.Shaping.Sites[i].Bindings)
	}
	for i := range c.Shaping.Domains {
		check(fmt.Sprintf("shaping.domains[%d]", i), &c.Shaping.Domains[i].ShapingValues, c.Shaping.Domains[i].Bindings)
	}
}

func (c *Config) validateHTTPInject(v *validator) {
	h := c.Inject.HTTP
	const p = "inject.http."
	for i, a := range h.Listen {
		v.hostPort(fmt.Sprintf(p+"listen[%d]", i), a, true)
	}
	if h.MaxMessageSize <= 0 {
		v.bad(p+"max_message_size", "%d must be positive", h.MaxMessageSize)
	}
	if h.MaxRecipients < 1 {
		v.bad(p+"max_recipients", "%d must be at least 1", h.MaxRecipients)
	}
	if h.TokensFile != "" {
		if fi, err := os.Stat(h.TokensFile); err != nil {
			v.bad(p+"tokens_file", "%q: %v", h.TokensFile, err)
		} else if !fi.Mode().IsRegular() {
			v.bad(p+"tokens_file", "%q is not a regular file", h.TokensFile)
		}
	}
}
