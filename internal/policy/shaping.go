package policy

// Shaping resolution: which limits and timings apply to a domain/binding
// pair, and where each came from.
//
// The config's scopes are compiled once, by NewShaper, into layers: a layer
// is the set of keys one scope sets, with their values and the scope's name.
// Resolve then stacks the layers that apply, least specific first:
//
//	built-in < shaping.default < provider < site < domain entries
//	  < provider's narrowing < site's narrowing < domain entries' narrowings
//
// where the domain entries are "*", then the "*.suffix" entries that match,
// shortest suffix first, then the exact entry; and a scope's narrowings are
// its group narrowings (file order) and then its binding narrowing. Each
// layer overrides only the keys it sets. A Shaper holds nothing that changes
// after NewShaper, so it is shared by every goroutine without a lock, and a
// reload builds a new one.

import (
	"fmt"
	"strings"
	"time"

	"github.com/mtad/mtad/internal/config"
)

// Shaping is the resolved shaping of one domain/binding pair.
type Shaping struct {
	// MaxConnections caps open connections to the site from the binding;
	// MaxDeliveriesPerConnection is how many deliveries a connection
	// carries before QUIT. 0 = no limit.
	MaxConnections, MaxDeliveriesPerConnection int
	// MaxMessageRate and MaxConnectionRate are budgets of the site and
	// binding; the zero Rate is unlimited.
	MaxMessageRate, MaxConnectionRate Rate
	// ProviderMaxConnections and ProviderMaxMessageRate are budgets of the
	// binding across all of Provider's sites; 0 and the zero Rate are no
	// limit, and both mean nothing when Provider is "".
	ProviderMaxConnections int
	ProviderMaxMessageRate Rate
	// The retry schedule, the age at which a message expires, and how long
	// an idle session waits for more work. MaxRetryInterval is never less
	// than RetryInterval: when scopes set them so, the maximum is raised.
	RetryInterval, MaxRetryInterval, MaxAge, IdleTimeout time.Duration
	// ConsecutiveConnectionFailuresBeforeDelay is how many connection
	// attempts in a row may fail before the pair is delayed.
	ConsecutiveConnectionFailuresBeforeDelay int
	// MXRollup says whether the domain shares its site's budgets.
	MXRollup bool
	// The site's own budgets from one binding, shared by every domain
	// rolled up on it: the values of default, provider and site scopes
	// (and their binding narrowings) without the domain entries. They
	// equal the fields above unless a domain entry set one, which is then
	// a budget of the domain alone, within the site's.
	SiteMaxConnections    int
	SiteMaxMessageRate    Rate
	SiteMaxConnectionRate Rate
	// TLS is the pair's TLS policy (config.TLSModes); MTASTS and DANE
	// say whether those checks apply to it (internal/tlspolicy).
	TLS          string
	MTASTS, DANE bool
	// Provider is the name of the matched provider, "" when none.
	Provider string
	// Site keys the budgets the pair shares: SiteKey(mx) when MXRollup
	// and the MX set is known, else "domain:" + the domain.
	Site string
	// Sources maps each config key ("max_message_rate", "mx_rollup") to
	// the scope its value came from: "built-in", "delivery" (the
	// delivery.* timings), "default", "provider google",
	// "site mx1.a,mx2.a", "domain *.example.com",
	// "domain example.com binding b1", "provider google group g2".
	Sources map[string]string
}

// The keys a scope may set, as the config names them.
const (
	keyMaxConnections = iota
	keyMaxDeliveriesPerConnection
	keyMaxMessageRate
	keyMaxConnectionRate
	keyProviderMaxConnections
	keyProviderMaxMessageRate
	keyRetryInterval
	keyMaxRetryInterval
	keyMaxAge
	keyIdleTimeout
	keyConsecutiveConnectionFailures
	keyMXRollup
	keyTLS
	keyMTASTS
	keyDANE
	numKeys
)

var keyNames = [numKeys]string{
	"max_connections", "max_deliveries_per_connection",
	"max_message_rate", "max_connection_rate",
	"provider_max_connections", "provider_max_message_rate",
	"retry_interval", "max_retry_interval", "max_age", "idle_timeout",
	"consecutive_connection_failures_before_delay", "mx_rollup",
	"tls", "mta_sts", "dane",
}

// layer is what one scope sets: the keys in set, their values in v.
type layer struct {
	source string
	set    uint16
	v      Shaping
}

func (l *layer) has(k int) bool { return l.set&(1<<k) != 0 }

// apply overrides dst's keys that l sets.
func (l *layer) apply(dst *Shaping) {
	if l == nil || l.set == 0 {
		return
	}
	for k := range numKeys {
		if !l.has(k) {
			continue
		}
		dst.Sources[keyNames[k]] = l.source
		switch k {
		case keyMaxConnections:
			dst.MaxConnections = l.v.MaxConnections
		case keyMaxDeliveriesPerConnection:
			dst.MaxDeliveriesPerConnection = l.v.MaxDeliveriesPerConnection
		case keyMaxMessageRate:
			dst.MaxMessageRate = l.v.MaxMessageRate
		case keyMaxConnectionRate:
			dst.MaxConnectionRate = l.v.MaxConnectionRate
		case keyProviderMaxConnections:
			dst.ProviderMaxConnections = l.v.ProviderMaxConnections
		case keyProviderMaxMessageRate:
			dst.ProviderMaxMessageRate = l.v.ProviderMaxMessageRate
		case keyRetryInterval:
			dst.RetryInterval = l.v.RetryInterval
		case keyMaxRetryInterval:
			dst.MaxRetryInterval = l.v.MaxRetryInterval
		case keyMaxAge:
			dst.MaxAge = l.v.MaxAge
		case keyIdleTimeout:
			dst.IdleTimeout = l.v.IdleTimeout
		case keyConsecutiveConnectionFailures:
			dst.ConsecutiveConnectionFailuresBeforeDelay = l.v.ConsecutiveConnectionFailuresBeforeDelay
		case keyMXRollup:
			dst.MXRollup = l.v.MXRollup
		case keyTLS:
			dst.TLS = l.v.TLS
		case keyMTASTS:
			dst.MTASTS = l.v.MTASTS
		case keyDANE:
			dst.DANE = l.v.DANE
		}
	}
}

// scope is a compiled config scope: its own layer and, by binding name, the
// layers of its narrowings that apply to that binding, in order.
type scope struct {
	base     *layer
	narrow   map[string][]*layer
	isDomain bool // a shaping.domains entry
}

type provider struct {
	name        string
	matchMX     []string
	matchDomain []string
	scope
}

// Shaper resolves the shaping of domain/binding pairs from one config. It is
// immutable once built and safe for concurrent use.
type Shaper struct {
	builtin   layer
	def       layer
	providers []provider
	sites     map[string]*scope // by SiteKey
	exact     map[string]*scope // domain entries by domain
	suffix    map[string]*scope // "*.suffix" entries by suffix
	star      *scope            // the "*" entry
	maxAgeSet bool              // some scope sets max_age (MaxAge's fast path)
}

// NewShaper compiles cfg.Shaping, with cfg.Delivery's timings as the
// built-in ones and cfg's bindings and groups for the narrowings (a group
// narrowing applies to every binding of the group; group "default" is every
// binding unless the config defines it). cfg should have passed Validate;
// NewShaper still refuses, naming the key, a rate it cannot parse or a
// narrowing that names no binding or group.
func NewShaper(cfg *config.Config) (*Shaper, error) {
	b := &shaperBuilder{groups: groupMembers(cfg)}
	d := cfg.Delivery
	s := &Shaper{
		builtin: layer{source: "built-in", v: Shaping{
			MaxConnections:                           config.DefaultMaxConnections,
			MaxDeliveriesPerConnection:               config.DefaultMaxDeliveriesPerConnection,
			ConsecutiveConnectionFailuresBeforeDelay: config.DefaultConsecutiveConnectionFailuresBeforeDelay,
			MXRollup:                                 true,
		}},
		sites:  map[string]*scope{},
		exact:  map[string]*scope{},
		suffix: map[string]*scope{},
	}
	s.builtin.set = 1<<numKeys - 1
	s.builtin.v.RetryInterval, s.builtin.v.MaxRetryInterval = d.RetryInterval, d.MaxRetryInterval
	s.builtin.v.MaxAge, s.builtin.v.IdleTimeout = d.MaxAge, d.IdleTimeout
	s.builtin.v.TLS, s.builtin.v.MTASTS, s.builtin.v.DANE = d.TLS, cfg.TLS.MTASTS, cfg.TLS.DANE
	if s.builtin.v.TLS == "" {
		s.builtin.v.TLS = "opportunistic" // a hand-built Config
	}

	sh := &cfg.Shaping
	s.def = *b.layer("shaping.default", "default", &sh.Default, nil)
	for i := range sh.Providers {
		p := &sh.Providers[i]
		key := fmt.Sprintf("shaping.providers[%d]", i)
		pr := provider{name: p.Name, scope: b.scope(key, "provider "+p.Name, &p.ShapingValues, nil, p.Bindings)}
		for _, m := range p.MatchMX {
			pr.matchMX = append(pr.matchMX, config.NormalizeHost(m))
		}
		for _, m := range p.MatchDomain {
			pr.matchDomain = append(pr.matchDomain, config.NormalizeHost(m))
		}
		s.providers = append(s.providers, pr)
	}
	for i := range sh.Sites {
		st := &sh.Sites[i]
		k := SiteKey(st.MX)
		sc := b.scope(fmt.Sprintf("shaping.sites[%d]", i), "site "+k, &st.ShapingValues, nil, st.Bindings)
		s.sites[k] = &sc
	}
	for i := range sh.Domains {
		dm := &sh.Domains[i]
		m := config.NormalizeHost(dm.Match)
		sc := b.scope(fmt.Sprintf("shaping.domains[%d]", i), "domain "+m, &dm.ShapingValues, dm.MXRollup, dm.Bindings)
		sc.isDomain = true
		switch {
		case m == "*":
			s.star = &sc
		case strings.HasPrefix(m, "*."):
			s.suffix[m[2:]] = &sc
		default:
			s.exact[m] = &sc
		}
	}
	if len(b.errs) > 0 {
		return nil, fmt.Errorf("shaping: %s", strings.Join(b.errs, "; "))
	}
	s.maxAgeSet = b.maxAgeSet
	return s, nil
}

// MaxAge is Resolve(domain, nil, binding).MaxAge without the cost of a
// whole resolution when no scope sets max_age (the injection path asks it
// for every message).
func (s *Shaper) MaxAge(domain, binding string) time.Duration {
	if !s.maxAgeSet {
		return s.builtin.v.MaxAge
	}
	return s.Resolve(domain, nil, binding).MaxAge
}

// groupMembers maps each binding group to its bindings' names, with the
// implicit group "default" (every binding) when the config has none of
// that name.
func groupMembers(cfg *config.Config) map[string][]string {
	g := map[string][]string{}
	for _, bg := range cfg.BindingGroups {
		for _, m := range bg.Bindings {
			g[bg.Name] = append(g[bg.Name], m.Name)
		}
	}
	if _, ok := g["default"]; !ok {
		all := []string{"default"}
		if len(cfg.Bindings) > 0 {
			all = all[:0]
			for _, b := range cfg.Bindings {
				all = append(all, b.Name)
			}
		}
		g["default"] = all
	}
	return g
}

type shaperBuilder struct {
	groups    map[string][]string
	errs      []string
	maxAgeSet bool // some scope sets max_age
}

func (b *shaperBuilder) scope(key, source string, sv *config.ShapingValues, rollup *bool, ns []config.BindingShaping) scope {
	sc := scope{base: b.layer(key, source, sv, rollup)}
	// Groups first, then the single bindings, so that within one scope a
	// binding's own narrowing beats its group's.
	for _, groupsPass := range []bool{true, false} {
		for i := range ns {
			n := &ns[i]
			if (n.Group != "") != groupsPass {
				continue
			}
			nkey := fmt.Sprintf("%s.bindings[%d]", key, i)
			var members []string
			var who string
			if groupsPass {
				who = "group " + n.Group
				var ok bool
				if members, ok = b.groups[n.Group]; !ok {
					b.errs = append(b.errs, fmt.Sprintf("%s.group: no binding group %q", nkey, n.Group))
					continue
				}
			} else {
				who = "binding " + n.Binding
				members = []string{n.Binding}
			}
			l := b.layer(nkey, source+" "+who, &n.ShapingValues, nil)
			if sc.narrow == nil {
				sc.narrow = map[string][]*layer{}
			}
			for _, m := range members {
				sc.narrow[m] = append(sc.narrow[m], l)
			}
		}
	}
	return sc
}

// layer compiles the keys sv sets; key names the scope in errors.
func (b *shaperBuilder) layer(key, source string, sv *config.ShapingValues, rollup *bool) *layer {
	l := &layer{source: source}
	setInt := func(k int, p *int, dst *int) {
		if p != nil {
			l.set |= 1 << k
			*dst = *p
		}
	}
	setDur := func(k int, p *time.Duration, dst *time.Duration) {
		if p != nil {
			l.set |= 1 << k
			*dst = *p
		}
	}
	setRate := func(k int, p *string, dst *Rate) {
		if p == nil {
			return
		}
		r, err := ParseRate(*p)
		if err != nil {
			b.errs = append(b.errs, fmt.Sprintf("%s.%s: %v", key, keyNames[k], err))
			return
		}
		l.set |= 1 << k
		*dst = r
	}
	v := &l.v
	setInt(keyMaxConnections, sv.MaxConnections, &v.MaxConnections)
	setInt(keyMaxDeliveriesPerConnection, sv.MaxDeliveriesPerConnection, &v.MaxDeliveriesPerConnection)
	setRate(keyMaxMessageRate, sv.MaxMessageRate, &v.MaxMessageRate)
	setRate(keyMaxConnectionRate, sv.MaxConnectionRate, &v.MaxConnectionRate)
	setInt(keyProviderMaxConnections, sv.ProviderMaxConnections, &v.ProviderMaxConnections)
	setRate(keyProviderMaxMessageRate, sv.ProviderMaxMessageRate, &v.ProviderMaxMessageRate)
	setDur(keyRetryInterval, sv.RetryInterval, &v.RetryInterval)
	setDur(keyMaxRetryInterval, sv.MaxRetryInterval, &v.MaxRetryInterval)
	setDur(keyMaxAge, sv.MaxAge, &v.MaxAge)
	if sv.MaxAge != nil {
		b.maxAgeSet = true
	}
	setDur(keyIdleTimeout, sv.IdleTimeout, &v.IdleTimeout)
	setInt(keyConsecutiveConnectionFailures, sv.ConsecutiveConnectionFailuresBeforeDelay, &v.ConsecutiveConnectionFailuresBeforeDelay)
	if sv.TLS != nil {
		l.set |= 1 << keyTLS
		v.TLS = *sv.TLS
	}
	if sv.MTASTS != nil {
		l.set |= 1 << keyMTASTS
		v.MTASTS = *sv.MTASTS
	}
	if sv.DANE != nil {
		l.set |= 1 << keyDANE
		v.DANE = *sv.DANE
	}
	if rollup != nil {
		l.set |= 1 << keyMXRollup
		v.MXRollup = *rollup
	}
	return l
}

// SiteKey names an MX host set, the budget key of a site: the host names
// lower-cased, trailing dots stripped, sorted, deduplicated and joined
// with ",".
func SiteKey(mx []string) string { return config.SiteKey(mx) }

// Resolve returns the shaping of domain (case and a trailing dot ignored)
// sent from binding ("" or an unknown name: no binding narrowing applies),
// given the domain's MX host names (nil when not yet resolved: no site and
// no provider by MX then). The result is the caller's to keep.
func (s *Shaper) Resolve(domain string, mx []string, binding string) *Shaping {
	domain = config.NormalizeHost(domain)
	out := &Shaping{Sources: make(map[string]string, numKeys)}
	s.builtin.apply(out)
	for _, k := range []int{keyRetryInterval, keyMaxRetryInterval, keyMaxAge, keyIdleTimeout, keyTLS} {
		out.Sources[keyNames[k]] = "delivery"
	}
	out.Sources[keyNames[keyMTASTS]], out.Sources[keyNames[keyDANE]] = "tls", "tls"
	s.def.apply(out)

	// The matching scopes, least specific first; few enough to stay on
	// the stack.
	var buf [8]*scope
	matched := buf[:0]
	if p := s.provider(domain, mx); p != nil {
		out.Provider = p.name
		matched = append(matched, &p.scope)
	}
	var siteKey string
	if len(mx) > 0 {
		siteKey = SiteKey(mx)
		if sc := s.sites[siteKey]; sc != nil {
			matched = append(matched, sc)
		}
	}
	if s.star != nil {
		matched = append(matched, s.star)
	}
	if len(s.suffix) > 0 {
		// "*.c" before "*.b.c" for a.b.c: walk the dots from the right.
		for i := len(domain) - 1; i > 0; i-- {
			if domain[i] == '.' {
				if sc := s.suffix[domain[i+1:]]; sc != nil {
					matched = append(matched, sc)
				}
			}
		}
	}
	if sc := s.exact[domain]; sc != nil {
		matched = append(matched, sc)
	}
	for _, sc := range matched {
		sc.base.apply(out)
	}
	if binding != "" {
		for _, sc := range matched {
			for _, l := range sc.narrow[binding] {
				l.apply(out)
			}
		}
	}
	// The site's own budgets: what default, provider and site scopes say,
	// without the domain entries. Domains rolled up on one site share
	// these; a domain entry's own value is a budget of that domain alone
	// (the scheduler keeps both).
	out.SiteMaxConnections, out.SiteMaxMessageRate, out.SiteMaxConnectionRate =
		out.MaxConnections, out.MaxMessageRate, out.MaxConnectionRate
	if nsite := len(matched) - s.domainScopes(matched); nsite < len(matched) {
		site := Shaping{Sources: make(map[string]string, numKeys)}
		s.builtin.apply(&site)
		s.def.apply(&site)
		for _, sc := range matched[:nsite] {
			sc.base.apply(&site)
		}
		if binding != "" {
			for _, sc := range matched[:nsite] {
				for _, l := range sc.narrow[binding] {
					l.apply(&site)
				}
			}
		}
		out.SiteMaxConnections, out.SiteMaxMessageRate, out.SiteMaxConnectionRate =
			site.MaxConnections, site.MaxMessageRate, site.MaxConnectionRate
	}

	if out.MaxRetryInterval < out.RetryInterval {
		out.MaxRetryInterval = out.RetryInterval
	}
	if out.MXRollup && siteKey != "" {
		out.Site = siteKey
	} else {
		out.Site = "domain:" + domain
	}
	return out
}

// domainScopes counts the domain entries among matched: they come last.
func (s *Shaper) domainScopes(matched []*scope) int {
	n := 0
	for i := len(matched) - 1; i >= 0 && matched[i].isDomain; i-- {
		n++
	}
	return n
}

// HasProvider reports whether a provider entry is named name.
func (s *Shaper) HasProvider(name string) bool {
	for i := range s.providers {
		if s.providers[i].name == name {
			return true
		}
	}
	return false
}

// ProviderOf returns the name of the provider of domain with MX hosts mx,
// "" when none matches.
func (s *Shaper) ProviderOf(domain string, mx []string) string {
	if p := s.provider(config.NormalizeHost(domain), mx); p != nil {
		return p.name
	}
	return ""
}

// provider returns the first provider, in file order, that every MX host
// matches by match_mx, or whose match_domain matches domain.
func (s *Shaper) provider(domain string, mx []string) *provider {
	for i := range s.providers {
		p := &s.providers[i]
		if len(mx) > 0 && len(p.matchMX) > 0 && allMatch(mx, p.matchMX) {
			return p
		}
		for _, suf := range p.matchDomain {
			if suffixMatch(domain, suf) {
				return p
			}
		}
	}
	return nil
}

func allMatch(hosts, suffixes []string) bool {
	for _, h := range hosts {
		h = config.NormalizeHost(h)
		ok := false
		for _, suf := range suffixes {
			if suffixMatch(h, suf) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// suffixMatch: ".google.com" matches the names below google.com;
// "hotmail.com" matches hotmail.com itself and the names below it. Both
// arguments are already normalized.
func suffixMatch(name, suf string) bool {
	if strings.HasPrefix(suf, ".") {
		return len(name) > len(suf) && strings.HasSuffix(name, suf)
	}
	return name == suf || len(name) > len(suf) && strings.HasSuffix(name, suf) && name[len(name)-len(suf)-1] == '.'
}
