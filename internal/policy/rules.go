package policy

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/outcome"
)

// Response rules (config response_rules and response_rules_file) turn a
// remote reply into an action: suspend, throttle, bounce, defer or rebind a
// scope for a while. Rules decides; the scheduler applies the action
// (Suspensions.Add, Overrides.Set, ...) and writes the one log record that
// names the rule and the reply.

// Reply is a remote reply as the rules see it.
type Reply struct {
	Code     int
	Enhanced string // "4.7.0"; "" = none
	Text     string
	// Local marks mtad's own failure (connection refused, DNS, timeout, no
	// reply): it never matches a rule, whose patterns are written for what
	// receivers say.
	Local bool
}

// ReplyOf returns the reply of a delivery result, Local when mtad decided
// it (the same test bounce classification uses).
func ReplyOf(e *outcome.Error) Reply {
	r := Reply{Code: e.Code, Text: e.Message, Local: local(e)}
	if en := e.Enhanced; en != (smtp.EnhancedCode{}) && en != smtp.NoEnhancedCode {
		r.Enhanced = fmt.Sprintf("%d.%d.%d", en[0], en[1], en[2])
	}
	return r
}

// Where says which pair got a reply: the recipient domain, its site (MX
// host set key), its provider ("" = none) and the binding.
type Where struct {
	Domain, Site, Provider, Binding string
}

// The actions.
const (
	ActionSuspend  = "suspend"
	ActionThrottle = "throttle"
	ActionBounce   = "bounce"
	ActionDefer    = "defer"
	ActionRebind   = "rebind"
)

// Action is what a fired rule asks for.
type Action struct {
	Rule string // the rule's name
	Kind string // ActionSuspend, ActionThrottle, ActionBounce, ActionDefer, ActionRebind
	// The scope it applies to: ScopeName is the domain, site or provider
	// ("" for ScopeBinding); Binding is the binding it is narrowed to (""
	// = every binding, from all_bindings).
	ScopeKind ScopeKind
	ScopeName string
	Binding   string
	// Duration is how long a suspend, throttle or rebind lasts; for a
	// defer, the retry delay (0 = the normal retry interval).
	Duration time.Duration
	Ramp     time.Duration // a throttle's climb back after Duration
	// The shaping keys a throttle overrides (nil = untouched).
	MaxMessageRate *Rate
	MaxConnections *int
	Rebind         string // a rebind's binding group
	Reply          Reply  // the reply that fired it
}

// Suspension is the suspension a suspend action puts in force from now.
func (a *Action) Suspension(now time.Time) Suspension {
	return Suspension{Kind: a.ScopeKind, Name: a.ScopeName, Binding: a.Binding,
		Reason: a.Reply.String(), Source: SourceRule, Rule: a.Rule, Start: now, Until: now.Add(a.Duration)}
}

// Override is the override a throttle action puts in force from now on the
// scope key the caller builds for (a.ScopeKind, a.ScopeName, a.Binding).
func (a *Action) Override(scope string, now time.Time) Override {
	return Override{Rule: a.Rule, Scope: scope, MaxMessageRate: a.MaxMessageRate, MaxConnections: a.MaxConnections,
		Start: now, End: now.Add(a.Duration), Ramp: a.Ramp}
}

// String renders the reply for a log record or a suspension's reason:
// "421 4.7.0 [TSS04] Messages from ...".
func (r Reply) String() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if r.Enhanced != "" {
		b.WriteByte(' ')
		b.WriteString(r.Enhanced)
	}
	if r.Text != "" {
		b.WriteByte(' ')
		b.WriteString(r.Text)
	}
	return b.String()
}

// Bounds of the trigger counters: a threshold rule remembers up to N match
// times (N ≤ 100, config) per rule and scope instance, for up to
// maxCounters scope instances; past that, counters whose window has passed
// are swept, then arbitrary ones dropped (a dropped counter only delays its
// rule's next firing).
const maxCounters = 4096

type responseRule struct {
	m           rule // code, enhanced, text
	name        string
	providers   []string
	domains     []string // exact, or ".suffix" for "*.suffix"
	scope       ScopeKind
	allBindings bool
	n           int
	window      time.Duration
	action      string
	duration    time.Duration
	ramp        time.Duration
	rate        *Rate
	conns       *int
	rebind      string
}

type counterKey struct {
	rule    int
	kind    ScopeKind
	name    string
	binding string
}

// Rules are the compiled response rules: immutable but for the trigger
// counters, and safe for concurrent use. A reload compiles a new Rules (and
// so starts its counters afresh).
type Rules struct {
	rules []responseRule

	mu       sync.Mutex
	counters map[counterKey][]time.Time
}

// CompileRules compiles the inline rules, then the rules of file ("" =
// none), in that order. Every error names the key: response_rules[i].key
// for an inline rule, the file, line, rule and key for a file's. Binding
// groups named by rebind are not checked (LoadRules does).
func CompileRules(inline []config.ResponseRule, file string) (*Rules, error) {
	return compileRules(inline, file, nil, nil)
}

// LoadRules compiles cfg's response_rules and response_rules_file, checking
// that each rebind names one of cfg's binding groups and each
// match_provider one of its shaping providers.
func LoadRules(cfg *config.Config) (*Rules, error) {
	return compileRules(cfg.ResponseRules, cfg.ResponseRulesFile, cfg.HasBindingGroup, cfg.HasProvider)
}

func compileRules(inline []config.ResponseRule, file string, hasGroup, hasProvider func(string) bool) (*Rules, error) {
	rs := &Rules{counters: map[counterKey][]time.Time{}}
	var errs []error
	seen := map[string]string{} // name → where
	add := func(r *config.ResponseRule, where func(key string) string) {
		for _, e := range r.Check(hasGroup, hasProvider) {
			errs = append(errs, fmt.Errorf("%s%s", where(e.Key), e.Msg))
		}
		if prev, dup := seen[r.Name]; dup && r.Name != "" {
			errs = append(errs, fmt.Errorf("%s%q is also the name of %s", where("name"), r.Name, prev))
		}
		if len(errs) > 0 {
			return
		}
		seen[r.Name] = strings.TrimSuffix(where(""), ": ")
		cr, key, err := compileResponse(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%w", where(key), err))
			return
		}
		rs.rules = append(rs.rules, cr)
	}
	for i := range inline {
		add(&inline[i], func(key string) string {
			k := fmt.Sprintf("response_rules[%d]", i)
			if key != "" {
				k += "." + key
			}
			return k + ": "
		})
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("response rules file: %w", err)
		}
		src := "response rules file " + file
		frs, err := parseResponseRules(src, data)
		if err != nil {
			return nil, err
		}
		for i := range frs {
			fr := &frs[i]
			add(&fr.ResponseRule, func(key string) string {
				line := fr.line
				if l := fr.keys[key]; l > 0 {
					line = l
				} else if base, _, ok := strings.Cut(key, "["); ok && fr.keys[base] > 0 {
					line = fr.keys[base]
				}
				w := fmt.Sprintf("%s: line %d: rule %d", src, line, i+1)
				if fr.Name != "" {
					w += " (" + strconv.Quote(fr.Name) + ")"
				}
				if key != "" {
					w += ": " + key
				}
				return w + ": "
			})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rs, nil
}

// compileResponse compiles a rule that passed config's Check.
func compileResponse(r *config.ResponseRule) (responseRule, string, error) {
	code := ""
	if r.Code != 0 {
		code = strconv.Itoa(r.Code)
	}
	m, key, err := compileMatch(BounceRule{Name: r.Name, Code: code, Enhanced: r.Enhanced, Text: r.Text})
	if err != nil {
		return responseRule{}, key, err
	}
	n, window, err := config.ParseTrigger(r.Trigger)
	if err != nil {
		return responseRule{}, "trigger", err
	}
	cr := responseRule{m: m, name: r.Name, providers: r.MatchProvider, scope: ScopeKind(r.Scope),
		allBindings: r.AllBindings, n: n, window: window, action: r.Action, duration: r.Duration,
		ramp: r.Ramp, rebind: r.Rebind}
	if cr.scope == "" {
		cr.scope = ScopeSite
	}
	for _, d := range r.MatchDomain {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if s, ok := strings.CutPrefix(d, "*"); ok {
			d = s // ".suffix"
		}
		cr.domains = append(cr.domains, d)
	}
	if t := r.Throttle; t != nil {
		if t.MaxMessageRate != "" {
			rt, err := ParseRate(t.MaxMessageRate)
			if err != nil {
				return responseRule{}, "throttle.max_message_rate", err
			}
			cr.rate = &rt
		}
		if t.MaxConnections != nil {
			c := *t.MaxConnections
			cr.conns = &c
		}
	}
	return cr, "", nil
}

// Len is the number of rules.
func (r *Rules) Len() int { return len(r.rules) }

// Match finds the first rule, in order, that matches reply at where. When
// its trigger fires (immediate, or the Nth match within its window for the
// same rule and scope instance) it returns the action and fired; matched
// names the rule that matched even when its trigger did not fire yet, for
// the log. A Local reply never matches. A rule whose scope is provider, at
// a site of no provider, acts on the site; a site scope with no site known
// acts on the pair.
func (r *Rules) Match(reply Reply, where Where, now time.Time) (a Action, fired bool, matched string) {
	if r == nil || reply.Local || len(r.rules) == 0 {
		return Action{}, false, ""
	}
	code := [3]int{reply.Code / 100 % 10, reply.Code / 10 % 10, reply.Code % 10}
	enh, hasEnh := parseEnhanced(reply.Enhanced)
	var cr *responseRule
	idx := 0
	for i := range r.rules {
		c := &r.rules[i]
		if c.m.hasCode && !match3(c.m.code, code) {
			continue
		}
		if c.m.hasEnh && (!hasEnh || !match3(c.m.enh, enh)) {
			continue
		}
		if len(c.providers) > 0 && !contains(c.providers, where.Provider) {
			continue
		}
		if len(c.domains) > 0 && !domainMatch(c.domains, where.Domain) {
			continue
		}
		if c.m.re != nil && !c.m.re.MatchString(reply.Text) {
			continue
		}
		cr, idx = c, i
		break
	}
	if cr == nil {
		return Action{}, false, ""
	}
	a = Action{Rule: cr.name, Kind: cr.action, Duration: cr.duration, Ramp: cr.ramp,
		MaxMessageRate: cr.rate, MaxConnections: cr.conns, Rebind: cr.rebind, Reply: reply}
	a.ScopeKind, a.ScopeName, a.Binding = cr.scopeOf(where)
	if cr.n > 1 && !r.count(counterKey{idx, a.ScopeKind, a.ScopeName, a.Binding}, cr, now) {
		// Not fired yet: the action says what the rule would do (the
		// caller still retries, rather than bounces, a reply a
		// non-bounce rule is counting), but it must not be put in force.
		return a, false, cr.name
	}
	return a, true, cr.name
}

// scopeOf is the scope instance the rule acts on for a reply at w.
func (c *responseRule) scopeOf(w Where) (ScopeKind, string, string) {
	kind, b := c.scope, w.Binding
	if c.allBindings {
		b = ""
	}
	if kind == ScopeProvider && w.Provider == "" {
		kind = ScopeSite
	}
	if kind == ScopeSite && w.Site == "" {
		kind, b = ScopePair, w.Binding
	}
	switch kind {
	case ScopeSite:
		return kind, w.Site, b
	case ScopeProvider:
		return kind, w.Provider, b
	case ScopeDomain:
		return kind, w.Domain, b
	case ScopeBinding:
		return kind, "", w.Binding
	}
	return ScopePair, w.Domain, w.Binding
}

// count records a match of threshold rule c at now and reports whether it
// is the Nth within the window, which fires the rule and starts the count
// afresh.
func (r *Rules) count(k counterKey, c *responseRule, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts, ok := r.counters[k]
	if !ok && len(r.counters) >= maxCounters {
		r.shrink(now)
	}
	kept := ts[:0]
	for _, t := range ts {
		if now.Sub(t) < c.window {
			kept = append(kept, t)
		}
	}
	kept = append(kept, now)
	if len(kept) >= c.n {
		delete(r.counters, k)
		return true
	}
	r.counters[k] = kept
	return false
}

// shrink makes room in the counters: first those whose newest match is
// older than their rule's window, then, if that freed less than a quarter,
// arbitrary ones (map order) down to three quarters of the cap.
func (r *Rules) shrink(now time.Time) {
	for k, ts := range r.counters {
		if len(ts) == 0 || now.Sub(ts[len(ts)-1]) >= r.rules[k.rule].window {
			delete(r.counters, k)
		}
	}
	for k := range r.counters {
		if len(r.counters) <= maxCounters*3/4 {
			break
		}
		delete(r.counters, k)
	}
}

// counterLen is the number of live trigger counters (for tests).
func (r *Rules) counterLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counters)
}

// parseEnhanced reads "4.7.0" without allocating.
func parseEnhanced(s string) (e [3]int, ok bool) {
	if s == "" {
		return e, false
	}
	part := 0
	digits := 0
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= '0' && ch <= '9':
			if digits == 3 {
				return e, false
			}
			e[part] = e[part]*10 + int(ch-'0')
			digits++
		case ch == '.' && digits > 0 && part < 2:
			part++
			digits = 0
		default:
			return e, false
		}
	}
	return e, part == 2 && digits > 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// domainMatch: an exact name, or ".suffix" for a "*.suffix" pattern, which
// matches names under suffix but not suffix itself. d is lower-case.
func domainMatch(pats []string, d string) bool {
	for _, p := range pats {
		if p == d || (p[0] == '.' && strings.HasSuffix(d, p)) {
			return true
		}
	}
	return false
}
