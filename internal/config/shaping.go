package config

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Shaping holds the limits and timings of delivery, by scope (DESIGN.md,
// "shaping"). internal/policy merges the scopes that apply to a
// domain/binding pair, least to most specific: Default < a provider < a site
// < the domain entries, then the bindings: narrowings of the same scopes in
// the same order. Each scope sets only the keys it names; the rest inherit.
type Shaping struct {
	Default   ShapingValues   `mapstructure:"default"`
	Providers []Provider      `mapstructure:"providers"`
	Sites     []Site          `mapstructure:"sites"`
	Domains   []ShapingDomain `mapstructure:"domains"`
}

// ShapingValues are the keys a scope may set. Every field is optional: nil
// is unset and inherits from the less specific scopes.
type ShapingValues struct {
	// MaxConnections caps open connections to the site from one binding
	// (a domain/binding pair's site; the domain's own when mx_rollup is
	// false).
	MaxConnections *int `mapstructure:"max_connections"`
	// MaxDeliveriesPerConnection is how many deliveries one connection
	// carries before it QUITs and a fresh one is opened.
	MaxDeliveriesPerConnection *int `mapstructure:"max_deliveries_per_connection"`
	// MaxMessageRate and MaxConnectionRate are budgets of the site and
	// binding, written "100/s", "10,000/h" or "unlimited" (see ParseRate).
	MaxMessageRate    *string `mapstructure:"max_message_rate"`
	MaxConnectionRate *string `mapstructure:"max_connection_rate"`
	// ProviderMaxConnections and ProviderMaxMessageRate are one budget per
	// binding across all the sites of a provider, so they are set only in
	// shaping.default (for every provider) or in a provider entry.
	ProviderMaxConnections *int    `mapstructure:"provider_max_connections"`
	ProviderMaxMessageRate *string `mapstructure:"provider_max_message_rate"`
	// The timings default to delivery.*, which stay the global defaults.
	RetryInterval    *time.Duration `mapstructure:"retry_interval"`
	MaxRetryInterval *time.Duration `mapstructure:"max_retry_interval"`
	MaxAge           *time.Duration `mapstructure:"max_age"`
	IdleTimeout      *time.Duration `mapstructure:"idle_timeout"`
	// ConsecutiveConnectionFailuresBeforeDelay is how many connection
	// attempts in a row may fail before the pair's queue is delayed.
	ConsecutiveConnectionFailuresBeforeDelay *int `mapstructure:"consecutive_connection_failures_before_delay"`
	// TLS is the pair's TLS policy, one of TLSModes (default
	// delivery.tls); MTASTS and DANE switch those checks on or off for
	// the scope (defaults tls.mta_sts and tls.dane).
	TLS    *string `mapstructure:"tls"`
	MTASTS *bool   `mapstructure:"mta_sts"`
	DANE   *bool   `mapstructure:"dane"`
}

// Provider is a named group of sites: a site belongs to it when every one of
// its MX hosts ends with one of MatchMX, or when the domain matches
// MatchDomain. The first provider in file order that matches wins.
type Provider struct {
	Name string `mapstructure:"name"`
	// MatchMX are host-name suffixes (".google.com"). A suffix with a
	// leading dot matches below it; one without matches the host itself
	// or below it.
	MatchMX []string `mapstructure:"match_mx"`
	// MatchDomain are recipient domains, matched like MatchMX.
	MatchDomain   []string `mapstructure:"match_domain"`
	ShapingValues `mapstructure:",squash"`
	Bindings      []BindingShaping `mapstructure:"bindings"`
}

// Site shapes the domains whose MX host set is exactly MX (order and case
// do not matter).
type Site struct {
	MX            []string `mapstructure:"mx"`
	ShapingValues `mapstructure:",squash"`
	Bindings      []BindingShaping `mapstructure:"bindings"`
}

// ShapingDomain shapes destination domains: Match is an exact domain,
// "*.suffix" (every domain below suffix, not suffix itself) or "*". Every
// entry that matches applies, "*" first, then the suffixes shortest first,
// then the exact entry, each overriding the keys it sets.
type ShapingDomain struct {
	Match string `mapstructure:"match"`
	// MXRollup (default true) makes the domain share the limits of its
	// site with every other domain on the same MX hosts; false gives the
	// domain budgets of its own.
	MXRollup      *bool `mapstructure:"mx_rollup"`
	ShapingValues `mapstructure:",squash"`
	Bindings      []BindingShaping `mapstructure:"bindings"`
}

// BindingShaping narrows its scope's values to one binding, or to every
// binding of a group: exactly one of Binding and Group is set.
type BindingShaping struct {
	Binding       string `mapstructure:"binding"`
	Group         string `mapstructure:"group"`
	ShapingValues `mapstructure:",squash"`
}

// Built-in shaping defaults: Default() puts them in shaping.default, and
// internal/policy falls back on them for a hand-built Config that leaves
// shaping.default empty.
const (
	DefaultMaxConnections                           = 20
	DefaultMaxDeliveriesPerConnection               = 100
	DefaultConsecutiveConnectionFailuresBeforeDelay = 5
)

func defaultShaping() Shaping {
	return Shaping{Default: ShapingValues{
		MaxConnections:                           ptrTo(DefaultMaxConnections),
		MaxDeliveriesPerConnection:               ptrTo(DefaultMaxDeliveriesPerConnection),
		ConsecutiveConnectionFailuresBeforeDelay: ptrTo(DefaultConsecutiveConnectionFailuresBeforeDelay),
	}}
}

func ptrTo[T any](v T) *T { return &v }

// movedDomains is the error for a config that still has the top-level
// domains: list of earlier versions.
const movedDomains = "domains: moved to shaping.domains (same entries; max_connections_per_binding is now a bindings: narrowing)"

// ParseRate reads a rate: a number (digits, an optional fraction, commas
// between groups of three digits), "/", and a unit s, m, h or d, with
// optional blanks around each part: "100/s", "10,000/h", "2.5 / s". The
// word "unlimited" is the zero rate (n = 0), which a scope sets to lift a
// rate a less specific scope imposes. The number must be positive. The
// error does not repeat s; callers name the key and the value.
//
// It lives here, not in internal/policy, so that Validate can check rates
// without importing a higher package; policy.ParseRate wraps it.
func ParseRate(s string) (n float64, per time.Duration, err error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, 0, errors.New("empty rate (write e.g. \"100/s\", \"10,000/h\" or \"unlimited\")")
	}
	if strings.EqualFold(t, "unlimited") {
		return 0, 0, nil
	}
	num, unit, ok := strings.Cut(t, "/")
	if !ok {
		return 0, 0, errors.New("no \"/\" (write e.g. \"100/s\", \"10,000/h\" or \"unlimited\")")
	}
	num, unit = strings.TrimSpace(num), strings.TrimSpace(unit)
	switch unit {
	case "s":
		per = time.Second
	case "m":
		per = time.Minute
	case "h":
		per = time.Hour
	case "d":
		per = 24 * time.Hour
	default:
		return 0, 0, errors.New("unit must be s, m, h or d")
	}
	digits, err := rateNumber(num)
	if err != nil {
		return 0, 0, err
	}
	n, err = strconv.ParseFloat(digits, 64)
	if err != nil || math.IsInf(n, 0) {
		return 0, 0, fmt.Errorf("%q is not a number", num)
	}
	if n <= 0 {
		return 0, 0, errors.New("must be more than 0 (to stop mail, suspend; for no limit, write \"unlimited\")")
	}
	return n, per, nil
}

// rateNumber checks the number part of a rate and returns it without its
// thousands separators. Only plain decimals are taken: ParseFloat alone
// would also accept "inf", "1e9" and "0x10".
func rateNumber(s string) (string, error) {
	intPart, frac, hasFrac := strings.Cut(s, ".")
	bad := fmt.Errorf("%q is not a number (write digits, e.g. 100, 10,000 or 2.5)", s)
	if intPart == "" || hasFrac && frac == "" {
		return "", bad
	}
	groups := strings.Split(intPart, ",")
	for i, g := range groups {
		if g == "" || !allDigits(g) || len(groups) > 1 && (i > 0 && len(g) != 3 || i == 0 && len(g) > 3) {
			return "", bad
		}
	}
	if hasFrac && !allDigits(frac) {
		return "", bad
	}
	return strings.Join(groups, "") + "." + frac, nil
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// NormalizeHost lower-cases a host or domain name and strips the root's
// trailing dot: the one spelling that scopes are matched by.
func NormalizeHost(s string) string { return strings.TrimSuffix(strings.ToLower(s), ".") }

// SiteKey names an MX host set: the hosts normalized, sorted, deduplicated
// and joined with ",", so the same set written in any order or case gives
// the same key.
func SiteKey(mx []string) string {
	hosts := make([]string, len(mx))
	for i, h := range mx {
		hosts[i] = NormalizeHost(h)
	}
	slices.Sort(hosts)
	return strings.Join(slices.Compact(hosts), ",")
}

func (s *Shaping) normalize() {
	if len(s.Providers) == 0 {
		s.Providers = nil
	}
	if len(s.Sites) == 0 {
		s.Sites = nil
	}
	if len(s.Domains) == 0 {
		s.Domains = nil
	}
	for i := range s.Providers {
		p := &s.Providers[i]
		if len(p.MatchMX) == 0 {
			p.MatchMX = nil
		}
		if len(p.MatchDomain) == 0 {
			p.MatchDomain = nil
		}
		for j := range p.MatchMX {
			p.MatchMX[j] = NormalizeHost(p.MatchMX[j])
		}
		for j := range p.MatchDomain {
			p.MatchDomain[j] = NormalizeHost(p.MatchDomain[j])
		}
	}
	for i := range s.Sites {
		for j := range s.Sites[i].MX {
			s.Sites[i].MX[j] = NormalizeHost(s.Sites[i].MX[j])
		}
	}
	for i := range s.Domains {
		if m := s.Domains[i].Match; !strings.HasSuffix(m, "*.") {
			// "*." is kept as written, for Validate to refuse: made
			// "*" it would be a catch-all beating every provider.
			s.Domains[i].Match = NormalizeHost(m)
		}
	}
}

// validateShaping checks shaping.*; bindings and groups are the names a
// bindings: narrowing may use.
func (c *Config) validateShaping(v *validator) {
	bindings, groups := c.bindingNames()
	s := &c.Shaping
	c.validateValues(v, "shaping.default", &s.Default, true)

	names := map[string]bool{}
	for i := range s.Providers {
		p := &s.Providers[i]
		key := fmt.Sprintf("shaping.providers[%d]", i)
		switch {
		case !validName(p.Name):
			v.bad(key+".name", "%q is not a valid name (letters, digits, '.', '_', '-')", p.Name)
		case names[p.Name]:
			v.bad(key+".name", "provider %q is defined twice", p.Name)
		}
		names[p.Name] = true
		if len(p.MatchMX)+len(p.MatchDomain) == 0 {
			v.bad(key, "provider %q matches nothing: give match_mx or match_domain", p.Name)
		}
		for j, m := range p.MatchMX {
			if !validDomain(strings.TrimPrefix(m, ".")) {
				v.bad(fmt.Sprintf("%s.match_mx[%d]", key, j), "%q is not a host-name suffix (e.g. \".google.com\")", m)
			}
		}
		for j, m := range p.MatchDomain {
			if !validDomain(strings.TrimPrefix(m, ".")) {
				v.bad(fmt.Sprintf("%s.match_domain[%d]", key, j), "%q is not a domain suffix (e.g. \"hotmail.com\")", m)
			}
		}
		c.validateValues(v, key, &p.ShapingValues, true)
		c.validateNarrowings(v, key, p.Bindings, bindings, groups, true)
	}

	sites := map[string]int{}
	for i := range s.Sites {
		st := &s.Sites[i]
		key := fmt.Sprintf("shaping.sites[%d]", i)
		if len(st.MX) == 0 {
			v.bad(key+".mx", "must list the site's MX hosts")
		}
		for j, h := range st.MX {
			if !validDomain(h) {
				v.bad(fmt.Sprintf("%s.mx[%d]", key, j), "%q is not a host name", h)
			}
		}
		if len(st.MX) > 0 {
			k := SiteKey(st.MX)
			if first, dup := sites[k]; dup {
				v.bad(key+".mx", "the MX set %q is already shaping.sites[%d]", k, first)
			} else {
				sites[k] = i
			}
		}
		c.validateValues(v, key, &st.ShapingValues, false)
		c.validateNarrowings(v, key, st.Bindings, bindings, groups, false)
	}

	matches := map[string]int{}
	for i := range s.Domains {
		d := &s.Domains[i]
		key := fmt.Sprintf("shaping.domains[%d]", i)
		if !validMatch(d.Match) {
			v.bad(key+".match", "%q is not an exact domain, \"*.suffix\" or \"*\"", d.Match)
		} else if first, dup := matches[d.Match]; dup {
			v.bad(key+".match", "%q is already shaping.domains[%d]", d.Match, first)
		} else {
			matches[d.Match] = i
		}
		c.validateValues(v, key, &d.ShapingValues, false)
		c.validateNarrowings(v, key, d.Bindings, bindings, groups, false)
	}
}

// bindingNames returns the names of the bindings and of the binding groups,
// counting the implicit ones: binding "default" when none is configured,
// group "default" always.
func (c *Config) bindingNames() (bindings, groups map[string]bool) {
	bindings, groups = map[string]bool{}, map[string]bool{"default": true}
	for _, b := range c.Bindings {
		bindings[b.Name] = true
	}
	if len(c.Bindings) == 0 {
		bindings["default"] = true
	}
	for _, g := range c.BindingGroups {
		groups[g.Name] = true
	}
	return bindings, groups
}

func (c *Config) validateNarrowings(v *validator, scope string, ns []BindingShaping, bindings, groups map[string]bool, providerKeys bool) {
	seen := map[string]int{}
	for i := range ns {
		n := &ns[i]
		key := fmt.Sprintf("%s.bindings[%d]", scope, i)
		var who string
		switch {
		case n.Binding == "" && n.Group == "":
			v.bad(key, "needs binding or group")
		case n.Binding != "" && n.Group != "":
			v.bad(key, "has both binding %q and group %q: give one", n.Binding, n.Group)
		case n.Binding != "":
			who = "binding " + n.Binding
			if !bindings[n.Binding] {
				v.bad(key+".binding", "no binding %q", n.Binding)
			}
		default:
			who = "group " + n.Group
			if !groups[n.Group] {
				v.bad(key+".group", "no binding group %q", n.Group)
			}
		}
		if who != "" {
			if first, dup := seen[who]; dup {
				v.bad(key, "%s is already narrowed in %s.bindings[%d]", who, scope, first)
			} else {
				seen[who] = i
			}
		}
		c.validateValues(v, key, &n.ShapingValues, providerKeys)
	}
}

// validateValues checks one scope's keys. providerKeys says whether the
// provider_* keys belong in this scope.
func (c *Config) validateValues(v *validator, scope string, s *ShapingValues, providerKeys bool) {
	atLeastOne := func(name string, p *int, why string) {
		if p != nil && *p < 1 {
			v.bad(scope+"."+name, "%d must be at least 1%s", *p, why)
		}
	}
	atLeastOne("max_connections", s.MaxConnections, " (to stop mail, suspend)")
	atLeastOne("max_deliveries_per_connection", s.MaxDeliveriesPerConnection, "")
	atLeastOne("provider_max_connections", s.ProviderMaxConnections, " (to stop mail, suspend)")
	atLeastOne("consecutive_connection_failures_before_delay", s.ConsecutiveConnectionFailuresBeforeDelay, "")
	for _, r := range []struct {
		name string
		val  *string
	}{
		{"max_message_rate", s.MaxMessageRate},
		{"max_connection_rate", s.MaxConnectionRate},
		{"provider_max_message_rate", s.ProviderMaxMessageRate},
	} {
		if r.val == nil {
			continue
		}
		if _, _, err := ParseRate(*r.val); err != nil {
			v.bad(scope+"."+r.name, "%q: %v", *r.val, err)
		}
	}
	if !providerKeys {
		if s.ProviderMaxConnections != nil {
			v.bad(scope+".provider_max_connections", "is one budget across a provider's sites: set it in shaping.default or a provider")
		}
		if s.ProviderMaxMessageRate != nil {
			v.bad(scope+".provider_max_message_rate", "is one budget across a provider's sites: set it in shaping.default or a provider")
		}
	}
	if s.RetryInterval != nil && *s.RetryInterval <= 0 {
		v.bad(scope+".retry_interval", "%s must be positive", *s.RetryInterval)
	}
	if s.MaxRetryInterval != nil && *s.MaxRetryInterval <= 0 {
		v.bad(scope+".max_retry_interval", "%s must be positive", *s.MaxRetryInterval)
	}
	if s.MaxAge != nil && *s.MaxAge <= 0 {
		v.bad(scope+".max_age", "%s must be positive", *s.MaxAge)
	}
	if s.TLS != nil {
		if err := validTLSMode(*s.TLS); err != nil {
			v.bad(scope+".tls", "%q %v", *s.TLS, err)
		}
	}
	if s.IdleTimeout != nil && *s.IdleTimeout < 0 {
		v.bad(scope+".idle_timeout", "%s is negative", *s.IdleTimeout)
	}
	// Within one scope the two intervals must agree; across scopes
	// internal/policy raises the maximum to the first interval.
	if s.RetryInterval != nil && s.MaxRetryInterval != nil && *s.RetryInterval > 0 && *s.MaxRetryInterval < *s.RetryInterval {
		v.bad(scope+".max_retry_interval", "%s is less than %s.retry_interval (%s)", *s.MaxRetryInterval, scope, *s.RetryInterval)
	}
}

// validMatch accepts a shaping.domains match: "*", "*.suffix" or a domain.
func validMatch(m string) bool {
	if m == "*" {
		return true
	}
	return validDomain(strings.TrimPrefix(m, "*."))
}
