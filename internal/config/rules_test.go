package config

import (
	"strings"
	"testing"
	"time"
)

func goodRule() ResponseRule {
	return ResponseRule{Name: "yahoo-tss04", Code: 421, Enhanced: "4.7.0", Text: `\[TSS0[45]\]`,
		Scope: "site", Trigger: "immediate", Action: "suspend", Duration: 2 * time.Hour}
}

func TestResponseRulesLoad(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "mtad.yaml", `
binding_groups:
  - name: g2
    bindings: [{name: default}]
shaping:
  providers:
    - name: google
      match_mx: [.google.com]
response_rules:
  - name: yahoo-tss04
    code: 421
    enhanced: "4.7.0"
    text: '\[TSS0[45]\]'
    scope: site
    trigger: immediate
    action: suspend
    duration: 2h
  - name: slow
    text: 'too quickly'
    match_provider: [google]
    match_domain: [gmail.com, "*.googlemail.com"]
    trigger: 3/10m
    action: throttle
    duration: 30m
    throttle: {max_message_rate: "1/m", max_connections: 1}
    ramp: 30m
  - name: move
    code: 550
    scope: domain
    all_bindings: true
    action: rebind
    duration: 1h
    rebind: g2
response_rules_file: rules.yaml
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ResponseRules) != 3 || c.ResponseRulesFile != "rules.yaml" {
		t.Fatalf("rules = %+v, file %q", c.ResponseRules, c.ResponseRulesFile)
	}
	if got := c.ResponseRules[0]; got.Text != `\[TSS0[45]\]` || got.Duration != 2*time.Hour || got.Code != 421 {
		t.Errorf("rule 0 = %+v", got)
	}
	r := c.ResponseRules[1]
	if r.Throttle == nil || r.Throttle.MaxMessageRate != "1/m" || *r.Throttle.MaxConnections != 1 || r.Ramp != 30*time.Minute {
		t.Errorf("rule 1 throttle = %+v ramp %v", r.Throttle, r.Ramp)
	}
	if len(r.MatchDomain) != 2 || r.MatchProvider[0] != "google" {
		t.Errorf("rule 1 filters = %v %v", r.MatchProvider, r.MatchDomain)
	}
	if !c.ResponseRules[2].AllBindings {
		t.Error("all_bindings lost")
	}
}

func TestResponseRulesUnknownKey(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "mtad.yaml", "response_rules:\n  - name: a\n    code: 421\n    action: defer\n    actoin: suspend\n")
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), "unknown key response_rules[0].actoin") {
		t.Fatalf("err = %v", err)
	}
}

// TestResponseRuleErrors: every problem is refused with the key named.
func TestResponseRuleErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(r *ResponseRule)
		want   string
	}{
		{"regexp", func(r *ResponseRule) { r.Text = `[TSS04` }, `response_rules[1].text: error parsing regexp: missing closing ]`},
		{"name", func(r *ResponseRule) { r.Name = "" }, `response_rules[1].name: "" is not a rule name`},
		{"nothing to match", func(r *ResponseRule) { r.Code, r.Enhanced, r.Text = 0, "", "" }, `response_rules[1]: needs at least one of code, enhanced, text`},
		{"code low", func(r *ResponseRule) { r.Code = 199 }, `response_rules[1].code: 199 is not a reply code (200-599)`},
		{"code high", func(r *ResponseRule) { r.Code = 600 }, `response_rules[1].code: 600 is not a reply code`},
		{"enhanced", func(r *ResponseRule) { r.Enhanced = "4.7" }, `response_rules[1].enhanced: "4.7" is not an enhanced code pattern`},
		{"enhanced class", func(r *ResponseRule) { r.Enhanced = "3.1.1" }, `response_rules[1].enhanced: "3.1.1" is not an enhanced code pattern`},
		{"enhanced vs code", func(r *ResponseRule) { r.Enhanced = "5.7.0" }, `response_rules[1].enhanced: "5.7.0" never matches code 421`},
		{"provider", func(r *ResponseRule) { r.MatchProvider = []string{"a b"} }, `response_rules[1].match_provider[0]: "a b" is not a provider name`},
		{"domain", func(r *ResponseRule) { r.MatchDomain = []string{"ok.example", "*x.example"} }, `response_rules[1].match_domain[1]: "*x.example" is neither`},
		{"scope", func(r *ResponseRule) { r.Scope = "world" }, `response_rules[1].scope: "world" is not one of pair|site|domain|provider|binding`},
		{"all bindings", func(r *ResponseRule) { r.Scope, r.AllBindings = "pair", true }, `response_rules[1].all_bindings: only for scope site, domain or provider`},
		{"trigger", func(r *ResponseRule) { r.Trigger = "3 per 10m" }, `response_rules[1].trigger: "3 per 10m" is neither "immediate" nor a threshold`},
		{"trigger window", func(r *ResponseRule) { r.Trigger = "3/0s" }, `response_rules[1].trigger: "3/0s" is neither`},
		{"trigger count", func(r *ResponseRule) { r.Trigger = "0/10m" }, `response_rules[1].trigger: "0/10m" is neither`},
		{"trigger big", func(r *ResponseRule) { r.Trigger = "101/1h" }, `response_rules[1].trigger: "101/1h": at most 100 matches`},
		{"action missing", func(r *ResponseRule) { r.Action = "" }, `response_rules[1].action: missing: one of suspend|throttle|bounce|defer|rebind`},
		{"action unknown", func(r *ResponseRule) { r.Action = "pause" }, `response_rules[1].action: "pause" is not one of`},
		{"suspend duration", func(r *ResponseRule) { r.Duration = 0 }, `response_rules[1].duration: missing: a suspend lasts for a duration`},
		{"negative duration", func(r *ResponseRule) { r.Duration = -time.Second }, `response_rules[1].duration: -1s is negative`},
		{"throttle duration", func(r *ResponseRule) {
			r.Action, r.Duration, r.Throttle = "throttle", 0, &RuleThrottle{MaxConnections: ptr(1)}
		}, `response_rules[1].duration: missing: a throttle lasts`},
		{"throttle keys", func(r *ResponseRule) { r.Action = "throttle" }, `response_rules[1].throttle: missing: a throttle overrides`},
		{"throttle empty", func(r *ResponseRule) { r.Action, r.Throttle = "throttle", &RuleThrottle{} }, `response_rules[1].throttle: missing`},
		{"throttle rate", func(r *ResponseRule) { r.Action, r.Throttle = "throttle", &RuleThrottle{MaxMessageRate: "fast"} }, `response_rules[1].throttle.max_message_rate: "fast" is not a rate`},
		{"throttle conns", func(r *ResponseRule) { r.Action, r.Throttle = "throttle", &RuleThrottle{MaxConnections: ptr(0)} }, `response_rules[1].throttle.max_connections: 0 must be at least 1`},
		{"throttle on suspend", func(r *ResponseRule) { r.Throttle = &RuleThrottle{MaxConnections: ptr(1)} }, `response_rules[1].throttle: only for action throttle`},
		{"ramp on suspend", func(r *ResponseRule) { r.Ramp = time.Minute }, `response_rules[1].ramp: only for action throttle`},
		{"negative ramp", func(r *ResponseRule) { r.Ramp = -time.Minute }, `response_rules[1].ramp: -1m0s is negative`},
		{"rebind missing", func(r *ResponseRule) { r.Action = "rebind" }, `response_rules[1].rebind: missing: the binding group`},
		{"rebind unknown", func(r *ResponseRule) { r.Action, r.Rebind = "rebind", "g9" }, `response_rules[1].rebind: "g9" is not a binding group`},
		{"rebind on suspend", func(r *ResponseRule) { r.Rebind = "default" }, `response_rules[1].rebind: only for action rebind`},
		{"bounce 2xx", func(r *ResponseRule) { r.Code, r.Enhanced, r.Action, r.Duration = 250, "", "bounce", 0 }, `response_rules[1].action: bounce on a 250 reply: a 2xx is a success`},
		{"bounce duration", func(r *ResponseRule) { r.Action = "bounce" }, `response_rules[1].duration: a bounce takes no duration`},
		{"duplicate name", func(r *ResponseRule) { r.Name = "first" }, `response_rules[1].name: "first" is also the name of response_rules[0]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			first := goodRule()
			first.Name = "first"
			r := goodRule()
			tc.mutate(&r)
			c.ResponseRules = []ResponseRule{first, r}
			err := c.Validate()
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), "config: "+tc.want) {
				t.Fatalf("err = %v\nwant  %q", err, tc.want)
			}
		})
	}
}

func TestResponseRuleGood(t *testing.T) {
	t.Parallel()
	c := Default()
	c.BindingGroups = []BindingGroup{{Name: "g2", Bindings: []GroupMember{{Name: "default", Weight: 1}}}}
	rs := []ResponseRule{goodRule(),
		{Name: "d", Code: 550, Enhanced: "5.7.*", Action: "defer"},
		{Name: "d2", Code: 550, Action: "defer", Duration: time.Hour},
		{Name: "b", Enhanced: "5.*.*", Action: "bounce"},
		{Name: "t", Text: "x", Action: "throttle", Duration: time.Hour, Throttle: &RuleThrottle{MaxMessageRate: "10,000/h"}, Trigger: "3/m"},
		{Name: "r", Text: "x", Action: "rebind", Duration: time.Hour, Rebind: "g2", Scope: "provider", AllBindings: true},
		{Name: "r2", Text: "x", Action: "rebind", Duration: time.Hour, Rebind: "default", Scope: "binding"},
	}
	c.ResponseRules = rs
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseTrigger(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in string
		n  int
		w  time.Duration
	}{
		{"", 1, 0}, {"immediate", 1, 0}, {"3/10m", 3, 10 * time.Minute}, {"1/h", 1, time.Hour}, {" 5/1h30m ", 5, 90 * time.Minute},
	}
	for _, tc := range tests {
		n, w, err := ParseTrigger(tc.in)
		if err != nil || n != tc.n || w != tc.w {
			t.Errorf("ParseTrigger(%q) = %d, %v, %v", tc.in, n, w, err)
		}
	}
	for _, bad := range []string{"now", "3", "/10m", "x/10m", "3/", "3/-1m", "3/10"} {
		if _, _, err := ParseTrigger(bad); err == nil {
			t.Errorf("ParseTrigger(%q) accepted", bad)
		}
	}
}

// TestRuleUnknownProviderAndStarDot: a rule's match_provider must name a
// shaping provider (else it never matches), and a shaping domain match
// "*." is refused rather than read as the catch-all "*".
func TestRuleUnknownProviderAndStarDot(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, want string }{
		{"response_rules:\n  - name: r\n    code: 421\n    match_provider: [Google]\n    action: defer\n",
			`response_rules[0].match_provider[0]: no provider "Google" in shaping.providers`},
		{"shaping:\n  domains:\n    - match: \"*.\"\n      max_connections: 2\n", "shaping.domains[0].match"},
	} {
		_, err := Load(writeFile(t, "mtad.yaml", tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
