package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ResponseRule is one entry of response_rules: a pattern on a remote reply
// and what to do when it matches (internal/policy compiles and applies it).
// Each of Code, Enhanced and Text is optional, at least one is given, and
// all that are given must match.
type ResponseRule struct {
	// Name labels the rule in the log, the admin API and errors; unique.
	Name string `mapstructure:"name"`
	// Code is the reply code, 200-599; 0 = any.
	Code int `mapstructure:"code"`
	// Enhanced is the enhanced status code, three parts each a number or
	// "*" (the bounce classes' syntax): "4.7.0", "5.7.*". A reply without
	// an enhanced code never matches a rule that gives one.
	Enhanced string `mapstructure:"enhanced"`
	// Text is a regular expression (Go RE2 syntax) searched for in the
	// reply text, case-insensitively.
	Text string `mapstructure:"text"`
	// MatchProvider narrows the rule to replies from these providers
	// (shaping.providers names); empty = any.
	MatchProvider []string `mapstructure:"match_provider"`
	// MatchDomain narrows the rule to these recipient domains, exact or
	// "*.suffix"; empty = any.
	MatchDomain []string `mapstructure:"match_domain"`
	// Scope is what the action applies to: pair, site (the default),
	// domain, provider or binding. pair, site, domain and provider are
	// narrowed to the binding that got the reply unless AllBindings.
	Scope       string `mapstructure:"scope"`
	AllBindings bool   `mapstructure:"all_bindings"`
	// Trigger is "immediate" (the default) or "N/window" ("3/10m"): the
	// action fires on the Nth match within the window for the same rule
	// and scope.
	Trigger string `mapstructure:"trigger"`
	// Action is suspend, throttle, bounce, defer or rebind.
	Action string `mapstructure:"action"`
	// Duration is how long a suspend, throttle or rebind lasts (required
	// for them), or the retry delay of a defer (0 = the normal retry
	// interval); a bounce takes none.
	Duration time.Duration `mapstructure:"duration"`
	// Throttle are the shaping keys a throttle overrides.
	Throttle *RuleThrottle `mapstructure:"throttle"`
	// Ramp is how long a throttle takes to climb back to normal after
	// Duration, in steps; 0 = at once.
	Ramp time.Duration `mapstructure:"ramp"`
	// Rebind is the binding group a rebind moves the scope's mail to.
	Rebind string `mapstructure:"rebind"`
}

// RuleThrottle are the keys a throttle action overrides; at least one.
type RuleThrottle struct {
	MaxMessageRate string `mapstructure:"max_message_rate"` // "1/m", "10,000/h"
	MaxConnections *int   `mapstructure:"max_connections"`  // at least 1
}

// The response rules' scopes, actions and trigger.
var (
	RuleScopes  = []string{"pair", "site", "domain", "provider", "binding"}
	RuleActions = []string{"suspend", "throttle", "bounce", "defer", "rebind"}
)

// TriggerImmediate is the trigger that fires on the first match.
const TriggerImmediate = "immediate"

// maxTriggerCount bounds N in "N/window": the policy keeps up to N times
// per rule and scope.
const maxTriggerCount = 100

// ParseTrigger reads a rule's trigger: "" or "immediate" is (1, 0);
// "N/window" is N matches within window, where window is a Go duration
// ("10m", "1h30m") or a bare unit (s, m, h: one of it).
func ParseTrigger(s string) (n int, window time.Duration, err error) {
	s = strings.TrimSpace(s)
	if s == "" || s == TriggerImmediate {
		return 1, 0, nil
	}
	bad := fmt.Errorf("%q is neither \"immediate\" nor a threshold such as \"3/10m\"", s)
	ns, ws, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, bad
	}
	n, err = strconv.Atoi(ns)
	if err != nil || n < 1 {
		return 0, 0, bad
	}
	if n > maxTriggerCount {
		return 0, 0, fmt.Errorf("%q: at most %d matches", s, maxTriggerCount)
	}
	switch ws {
	case "s", "m", "h":
		ws = "1" + ws
	}
	window, err = time.ParseDuration(ws)
	if err != nil || window <= 0 {
		return 0, 0, bad
	}
	return n, window, nil
}

// RuleError is one problem of a response rule; Key is the rule's key at
// fault ("text", "throttle.max_message_rate"; "" = the rule as a whole).
type RuleError struct {
	Key, Msg string
}

// Check returns the problems of one rule, each naming its key. hasGroup
// says whether a binding group exists (nil: not checked). Both the config
// (response_rules) and the rules file (internal/policy) check with it, so
// a rule means the same wherever it is written. A rate's syntax is
// checked here as "N/unit"; internal/policy parses it.
func (r *ResponseRule) Check(hasGroup func(string) bool, hasProvider ...func(string) bool) []RuleError {
	var errs []RuleError
	bad := func(key, format string, args ...any) {
		errs = append(errs, RuleError{key, fmt.Sprintf(format, args...)})
	}
	if !validName(r.Name) {
		bad("name", "%q is not a rule name (1-64 of letters, digits, '.', '_', '-')", r.Name)
	}
	if r.Code == 0 && r.Enhanced == "" && r.Text == "" {
		bad("", "needs at least one of code, enhanced, text")
	}
	if r.Code != 0 && (r.Code < 200 || r.Code > 599) {
		bad("code", "%d is not a reply code (200-599)", r.Code)
	}
	if r.Enhanced != "" {
		if cls, ok := enhancedClass(r.Enhanced); !ok {
			bad("enhanced", "%q is not an enhanced code pattern such as 4.7.0 or 5.7.*", r.Enhanced)
		} else if cls > 0 && r.Code >= 200 && r.Code/100 != cls {
			bad("enhanced", "%q never matches code %d (the classes differ)", r.Enhanced, r.Code)
		}
	}
	if r.Text != "" {
		if _, err := regexp.Compile(r.Text); err != nil {
			bad("text", "%v", err)
		}
	}
	for i, p := range r.MatchProvider {
		switch {
		case !validName(p):
			bad(fmt.Sprintf("match_provider[%d]", i), "%q is not a provider name", p)
		case len(hasProvider) > 0 && hasProvider[0] != nil && !hasProvider[0](p):
			// A rule that names a provider no shaping entry has would
			// never match: a typo, or a name in the wrong case.
			bad(fmt.Sprintf("match_provider[%d]", i), "no provider %q in shaping.providers", p)
		}
	}
	for i, d := range r.MatchDomain {
		if !validDomain(strings.TrimPrefix(d, "*.")) {
			bad(fmt.Sprintf("match_domain[%d]", i), "%q is neither a domain name nor \"*.suffix\"", d)
		}
	}
	scope := r.Scope
	if scope == "" {
		scope = "site"
	}
	if !oneOf(scope, RuleScopes) {
		bad("scope", "%q is not one of %s", r.Scope, strings.Join(RuleScopes, "|"))
	} else if r.AllBindings && (scope == "pair" || scope == "binding") {
		bad("all_bindings", "only for scope site, domain or provider (a %s is one binding's)", scope)
	}
	if _, _, err := ParseTrigger(r.Trigger); err != nil {
		bad("trigger", "%v", err)
	}
	if r.Duration < 0 {
		bad("duration", "%s is negative", r.Duration)
	}
	if r.Ramp < 0 {
		bad("ramp", "%s is negative", r.Ramp)
	}
	switch r.Action {
	case "suspend", "throttle", "rebind":
		if r.Duration <= 0 {
			bad("duration", "missing: a %s lasts for a duration (e.g. \"2h\")", r.Action)
		}
	case "bounce":
		if r.Duration != 0 {
			bad("duration", "a bounce takes no duration")
		}
		if r.Code >= 200 && r.Code < 300 {
			bad("action", "bounce on a %d reply: a 2xx is a success", r.Code)
		}
	case "defer":
	case "":
		bad("action", "missing: one of %s", strings.Join(RuleActions, "|"))
	default:
		bad("action", "%q is not one of %s", r.Action, strings.Join(RuleActions, "|"))
	}
	if r.Action == "throttle" {
		switch t := r.Throttle; {
		case t == nil || (t.MaxMessageRate == "" && t.MaxConnections == nil):
			bad("throttle", "missing: a throttle overrides max_message_rate and/or max_connections")
		default:
			if t.MaxMessageRate != "" && !validRuleRate(t.MaxMessageRate) {
				bad("throttle.max_message_rate", "%q is not a rate such as \"1/m\" or \"10,000/h\"", t.MaxMessageRate)
			}
			if t.MaxConnections != nil && *t.MaxConnections < 1 {
				bad("throttle.max_connections", "%d must be at least 1 (to send nothing, suspend)", *t.MaxConnections)
			}
		}
	} else {
		if r.Throttle != nil {
			bad("throttle", "only for action throttle")
		}
		if r.Ramp != 0 {
			bad("ramp", "only for action throttle")
		}
	}
	if r.Action == "rebind" {
		switch {
		case r.Rebind == "":
			bad("rebind", "missing: the binding group to move the mail to")
		case hasGroup != nil && !hasGroup(r.Rebind):
			bad("rebind", "%q is not a binding group", r.Rebind)
		}
	} else if r.Rebind != "" {
		bad("rebind", "only for action rebind")
	}
	return errs
}

func oneOf(s string, allowed []string) bool {
	for _, a := range allowed {
		if s == a {
			return true
		}
	}
	return false
}

// enhancedClass checks an enhanced code pattern (three parts, each a
// number or "*", the first 2, 4 or 5) and returns its class (0 = "*").
func enhancedClass(s string) (int, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return 0, false
	}
	cls := 0
	for i, p := range parts {
		if p == "*" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || (i == 0 && n != 2 && n != 4 && n != 5) {
			return 0, false
		}
		if i == 0 {
			cls = n
		}
	}
	return cls, true
}

// validRuleRate checks a throttle rate with the shaping rates' parser;
// "unlimited" is refused: a throttle lowers a rate.
func validRuleRate(s string) bool {
	n, _, err := ParseRate(s)
	return err == nil && n > 0 // a throttle lowers a rate: "unlimited" is no throttle
}

// HasProvider reports whether name is the name of a shaping.providers entry.
func (c *Config) HasProvider(name string) bool {
	for _, p := range c.Shaping.Providers {
		if p.Name == name {
			return true
		}
	}
	return false
}

// HasBindingGroup reports whether name is a binding group: one of
// binding_groups, or "default", which always exists.
func (c *Config) HasBindingGroup(name string) bool {
	if name == "default" {
		return true
	}
	for _, g := range c.BindingGroups {
		if g.Name == name {
			return true
		}
	}
	return false
}

func (c *Config) validateResponseRules(v *validator) {
	seen := map[string]int{}
	for i, r := range c.ResponseRules {
		key := fmt.Sprintf("response_rules[%d]", i)
		for _, e := range r.Check(c.HasBindingGroup, c.HasProvider) {
			k := key
			if e.Key != "" {
				k += "." + e.Key
			}
			v.bad(k, "%s", e.Msg)
		}
		if j, dup := seen[r.Name]; dup && r.Name != "" {
			v.bad(key+".name", "%q is also the name of response_rules[%d]", r.Name, j)
		} else {
			seen[r.Name] = i
		}
	}
	// response_rules_file is read and checked by internal/policy
	// (CompileRules), relative to the working directory: the shipped
	// config names configs/response-rules.yaml, which make run finds.
}
