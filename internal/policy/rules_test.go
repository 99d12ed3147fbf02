package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/outcome"
)

const shippedRules = "../../configs/response-rules.yaml"

func shipped(t testing.TB) *Rules {
	t.Helper()
	r, err := CompileRules(nil, shippedRules)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestShippedRules: each provider text of issue 9 (as the providers send
// it) fires the rule written for it, with the intended action and scope.
func TestShippedRules(t *testing.T) {
	t.Parallel()
	rs := shipped(t)
	if rs.Len() != 5 {
		t.Fatalf("shipped rules: %d, want 5", rs.Len())
	}
	w := Where{Domain: "example.com", Site: "mx1.example,mx2.example", Provider: "prov", Binding: "b1"}
	tests := []struct {
		reply     Reply
		rule      string
		action    string
		scope     ScopeKind
		scopeName string
	}{
		{Reply{421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", false},
			"yahoo-tss04-tss05", ActionSuspend, ScopeSite, w.Site},
		{Reply{421, "4.7.0", "[TSS05] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.56.1; see https://postmaster.yahooinc.com/error-codes", false},
			"yahoo-tss04-tss05", ActionSuspend, ScopeSite, w.Site},
		{Reply{421, "4.7.28", "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines.", false},
			"gmail-unsolicited-rate", ActionThrottle, ScopeProvider, "prov"},
		{Reply{451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775) [BN1NAM02FT062.eop-nam02.prod.protection.outlook.com]", false},
			"microsoft-ip-reputation", ActionThrottle, ScopeProvider, "prov"},
		{Reply{550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)", false},
			"microsoft-banned-ip", ActionSuspend, ScopeProvider, "prov"},
	}
	for _, tc := range tests {
		a, fired, matched := rs.Match(tc.reply, w, t0)
		if matched != tc.rule || !fired {
			t.Errorf("%.40q: matched %q fired %v, want %q", tc.reply.Text, matched, fired, tc.rule)
			continue
		}
		if a.Kind != tc.action || a.ScopeKind != tc.scope || a.ScopeName != tc.scopeName || a.Binding != "b1" || a.Duration <= 0 {
			t.Errorf("%s: action %+v", tc.rule, a)
		}
		if a.Kind == ActionThrottle && (a.MaxMessageRate == nil || a.MaxConnections == nil || a.Ramp <= 0) {
			t.Errorf("%s: throttle without keys or ramp: %+v", tc.rule, a)
		}
		if a.Reply != tc.reply {
			t.Errorf("%s: the action does not carry the reply", tc.rule)
		}
	}

	// Gmail's per-mailbox 4.2.1 fires only on the 10th from one binding to
	// one site within 10 minutes.
	tooQuick := Reply{450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time. If the user is able to receive mail at that time, your message will be delivered.", false}
	for i := range 9 {
		if _, fired, matched := rs.Match(tooQuick, w, t0.Add(time.Duration(i)*time.Second)); fired || matched != "gmail-receiving-too-quickly" {
			t.Fatalf("4.2.1 #%d: fired %v matched %q", i+1, fired, matched)
		}
	}
	if a, fired, _ := rs.Match(tooQuick, w, t0.Add(9*time.Second)); !fired || a.Kind != ActionThrottle || a.ScopeName != w.Site {
		t.Fatalf("the 10th 4.2.1 did not throttle the site: %v %+v", fired, a)
	}
	// A 452 with the "at a rate" wording matches the same rule.
	atRate := Reply{452, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.", false}
	if _, _, matched := rs.Match(atRate, w, t0); matched != "gmail-receiving-too-quickly" {
		t.Fatalf("452 4.2.1 at a rate: matched %q", matched)
	}

	// Ordinary replies match nothing.
	for _, r := range []Reply{
		{550, "5.1.1", "The email account that you tried to reach does not exist.", false},
		{421, "4.7.0", "Try again later, closing connection.", false},
		{250, "2.0.0", "OK", false},
	} {
		if _, fired, matched := rs.Match(r, w, t0); fired || matched != "" {
			t.Errorf("%v matched %q", r, matched)
		}
	}
}

// TestLocalNeverMatches: mtad's own failures never match, even with a text
// a rule would match.
func TestLocalNeverMatches(t *testing.T) {
	t.Parallel()
	rs, err := CompileRules([]config.ResponseRule{{Name: "any", Text: ".", Action: "defer"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	w := Where{Domain: "d.example", Binding: "b1"}
	if _, _, m := rs.Match(Reply{Code: 421, Text: "[TSS04] x"}, w, t0); m != "any" {
		t.Fatalf("a remote reply did not match: %q", m)
	}
	if _, fired, m := rs.Match(Reply{Code: 421, Enhanced: "4.4.1", Text: "connection refused", Local: true}, w, t0); fired || m != "" {
		t.Fatalf("a local failure matched %q", m)
	}
	for _, e := range []*outcome.Error{
		{Phase: outcome.PhaseConnect, Code: 421, Message: "dial tcp 127.0.0.1:25: connection refused", Temporary: true},
		{Phase: outcome.PhaseDNS, Code: 451, Message: "lookup: SERVFAIL", Temporary: true},
		{Phase: outcome.PhaseData, Message: "read: i/o timeout", Temporary: true},
	} {
		if r := ReplyOf(e); !r.Local {
			t.Errorf("ReplyOf(%+v) is not Local", e)
		} else if _, _, m := rs.Match(r, w, t0); m != "" {
			t.Errorf("local %v matched %q", e, m)
		}
	}
	r := ReplyOf(reply(outcome.PhaseMail, 421, "4.7.0", "[TSS04] deferred"))
	if r.Local || r.Enhanced != "4.7.0" || r.Code != 421 {
		t.Fatalf("ReplyOf(remote) = %+v", r)
	}
}

// TestThreshold: "3/10m" fires on the 3rd match within 10 minutes, not on
// three spread over 11, and counts each scope instance apart.
func TestThreshold(t *testing.T) {
	t.Parallel()
	rs, err := CompileRules([]config.ResponseRule{{Name: "three", Code: 421, Trigger: "3/10m", Action: "suspend", Duration: time.Hour}}, "")
	if err != nil {
		t.Fatal(err)
	}
	rep := Reply{Code: 421, Text: "slow down"}
	a := Where{Domain: "a.example", Site: "mx.a", Binding: "b1"}
	b := Where{Domain: "b.example", Site: "mx.b", Binding: "b1"}
	// Spread over 11 minutes: 0, 5.5, 11 → never 3 within 10.
	for _, at := range []time.Duration{0, 330 * time.Second, 11 * time.Minute} {
		if _, fired, m := rs.Match(rep, a, t0.Add(at)); fired || m != "three" {
			t.Fatalf("spread match at +%v: fired %v matched %q", at, fired, m)
		}
	}
	// Two in site b do not add to site a's count.
	rs.Match(rep, b, t0.Add(11*time.Minute))
	rs.Match(rep, b, t0.Add(11*time.Minute))
	// At 12 minutes, the matches at 5.5, 11 and 12 are 3 within 10 minutes.
	if _, fired, _ := rs.Match(rep, a, t0.Add(12*time.Minute)); !fired {
		t.Fatal("the 3rd within 10 minutes (5.5, 11, 12) did not fire")
	}
	// Firing starts the count afresh.
	if _, fired, _ := rs.Match(rep, a, t0.Add(12*time.Minute+time.Second)); fired {
		t.Fatal("fired again on the next match")
	}
	if _, fired, _ := rs.Match(rep, b, t0.Add(12*time.Minute)); !fired {
		t.Fatal("site b's 3rd did not fire")
	}
}

func TestCounterBound(t *testing.T) {
	t.Parallel()
	rs, err := CompileRules([]config.ResponseRule{{Name: "n", Code: 421, Trigger: "5/1h", Action: "defer"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * maxCounters {
		rs.Match(Reply{Code: 421}, Where{Domain: fmt.Sprint("d", i, ".example"), Binding: "b1"}, t0)
	}
	if n := rs.counterLen(); n > maxCounters {
		t.Fatalf("%d counters, cap %d", n, maxCounters)
	}
}

func TestScopes(t *testing.T) {
	t.Parallel()
	w := Where{Domain: "d.example", Site: "mx.d", Provider: "p", Binding: "b1"}
	tests := []struct {
		scope string
		all   bool
		where Where
		kind  ScopeKind
		name  string
		bind  string
	}{
		{"pair", false, w, ScopePair, "d.example", "b1"},
		{"site", false, w, ScopeSite, "mx.d", "b1"},
		{"", false, w, ScopeSite, "mx.d", "b1"},
		{"site", true, w, ScopeSite, "mx.d", ""},
		{"domain", false, w, ScopeDomain, "d.example", "b1"},
		{"domain", true, w, ScopeDomain, "d.example", ""},
		{"provider", false, w, ScopeProvider, "p", "b1"},
		{"provider", true, w, ScopeProvider, "p", ""},
		{"provider", false, Where{Domain: "d.example", Site: "mx.d", Binding: "b1"}, ScopeSite, "mx.d", "b1"},
		{"site", false, Where{Domain: "d.example", Binding: "b1"}, ScopePair, "d.example", "b1"},
		{"binding", false, w, ScopeBinding, "", "b1"},
	}
	for _, tc := range tests {
		rs, err := CompileRules([]config.ResponseRule{{Name: "r", Code: 421, Scope: tc.scope, AllBindings: tc.all, Action: "suspend", Duration: time.Hour}}, "")
		if err != nil {
			t.Fatal(err)
		}
		a, fired, _ := rs.Match(Reply{Code: 421}, tc.where, t0)
		if !fired || a.ScopeKind != tc.kind || a.ScopeName != tc.name || a.Binding != tc.bind {
			t.Errorf("scope %q all=%v at %+v: %s %q %q", tc.scope, tc.all, tc.where, a.ScopeKind, a.ScopeName, a.Binding)
		}
	}
}

// TestMatchOrderAndFilters: the first matching rule wins; filters on
// provider and domain narrow a rule; enhanced "*" parts match anything.
func TestMatchOrderAndFilters(t *testing.T) {
	t.Parallel()
	rs, err := CompileRules([]config.ResponseRule{
		{Name: "google-only", Code: 421, MatchProvider: []string{"google"}, Action: "defer"},
		{Name: "sub-only", Code: 421, MatchDomain: []string{"*.example.com", "exact.example"}, Action: "defer"},
		{Name: "enh", Enhanced: "4.7.*", Text: "BLOCKED", Action: "defer"},
		{Name: "catch", Code: 421, Action: "defer"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		r    Reply
		w    Where
		want string
	}{
		{Reply{Code: 421}, Where{Provider: "google", Domain: "a.example.com"}, "google-only"},
		{Reply{Code: 421}, Where{Provider: "yahoo", Domain: "a.example.com"}, "sub-only"},
		{Reply{Code: 421}, Where{Domain: "exact.example"}, "sub-only"},
		{Reply{Code: 421}, Where{Domain: "example.com"}, "catch"},
		{Reply{Code: 451, Enhanced: "4.7.1", Text: "you are blocked"}, Where{}, "enh"},
		{Reply{Code: 451, Enhanced: "4.2.1", Text: "you are blocked"}, Where{}, ""},
		{Reply{Code: 451, Text: "you are blocked"}, Where{}, ""}, // no enhanced code
		{Reply{Code: 451, Enhanced: "4.7", Text: "you are blocked"}, Where{}, ""},
	}
	for _, tc := range tests {
		if _, _, m := rs.Match(tc.r, tc.w, t0); m != tc.want {
			t.Errorf("%v at %+v: matched %q, want %q", tc.r, tc.w, m, tc.want)
		}
	}
}

func TestActionHelpers(t *testing.T) {
	t.Parallel()
	rs := shipped(t)
	w := Where{Domain: "y.example", Site: "mx.y", Binding: "b2"}
	a, _, _ := rs.Match(Reply{421, "4.7.0", "[TSS04] deferred", false}, w, t0)
	sp := a.Suspension(t0)
	if sp.Kind != ScopeSite || sp.Name != "mx.y" || sp.Binding != "b2" || sp.Rule != "yahoo-tss04-tss05" ||
		sp.Source != SourceRule || !sp.Until.Equal(t0.Add(2*time.Hour)) || sp.Reason != "421 4.7.0 [TSS04] deferred" {
		t.Fatalf("Suspension = %+v", sp)
	}
	s := NewSuspensions()
	s.Add(sp)
	if _, ok := s.Check(t0, "other.example", "mx.y", "", "b2"); !ok {
		t.Fatal("site × binding not suspended for another domain on the site")
	}
	if _, ok := s.Check(t0, "y.example", "mx.y", "", "b1"); ok {
		t.Fatal("another binding is suspended")
	}
	a, _, _ = rs.Match(Reply{451, "4.7.650", "temporarily rate limited due to IP reputation", false}, Where{Domain: "o.example", Site: "mx.o", Provider: "microsoft", Binding: "b1"}, t0)
	o := a.Override("provider:microsoft|b1", t0)
	if o.Rule != "microsoft-ip-reputation" || o.MaxMessageRate == nil || !o.End.Equal(t0.Add(time.Hour)) || o.Ramp != 2*time.Hour {
		t.Fatalf("Override = %+v", o)
	}
}

func writeRules(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRulesFileErrors: every problem of a file rule names the file, line,
// rule and key.
func TestRulesFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"regexp", "rules:\n  - name: a\n    code: 421\n    action: defer\n    text: '[x'\n",
			`line 5: rule 1 ("a"): text: error parsing regexp: missing closing ]`},
		{"unknown key", "rules:\n  - name: a\n    code: 421\n    actoin: defer\n", `line 4: rule 1: actoin: unknown key`},
		{"twice", "rules:\n  - name: a\n    code: 421\n    code: 422\n", `line 4: rule 1: code: given twice`},
		{"not a mapping", "rules:\n  - 421\n", `line 2: rule 1: must be a mapping of`},
		{"top key", "rulez: []\n", `line 1: rulez: unknown key`},
		{"code", "rules:\n  - name: a\n    code: four\n", `line 3: rule 1: code: "four" is not a whole number`},
		{"duration", "rules:\n  - name: a\n    code: 421\n    action: suspend\n    duration: 2 hours\n", `line 5: rule 1: duration: "2 hours" is not a duration`},
		{"missing duration", "rules:\n  - name: a\n    code: 421\n    action: suspend\n", `line 2: rule 1 ("a"): duration: missing`},
		{"throttle key", "rules:\n  - name: a\n    code: 421\n    action: throttle\n    throttle: {max_rate: 1/m}\n", `rule 1: throttle.max_rate: unknown key`},
		{"throttle rate", "rules:\n  - name: a\n    code: 421\n    action: throttle\n    duration: 1h\n    throttle:\n      max_message_rate: fast\n",
			`line 7: rule 1 ("a"): throttle.max_message_rate: "fast" is not a rate`},
		{"list", "rules:\n  - name: a\n    code: 421\n    match_domain: x.example\n", `line 4: rule 1: match_domain: must be a list`},
		{"list item", "rules:\n  - name: a\n    code: 421\n    action: defer\n    match_domain: [ok.example, 'bad domain']\n",
			`line 5: rule 1 ("a"): match_domain[1]: "bad domain" is neither`},
		{"bool", "rules:\n  - name: a\n    code: 421\n    all_bindings: yes please\n", `line 4: rule 1: all_bindings: "yes please" is not true or false`},
		{"scope", "rules:\n  - name: a\n    code: 421\n    action: defer\n    scope: world\n", `line 5: rule 1 ("a"): scope: "world" is not one of`},
		{"dup across", "rules:\n  - name: inline\n    code: 421\n    action: defer\n", `line 2: rule 1 ("inline"): name: "inline" is also the name of response_rules[0]`},
		{"yaml", "rules: [\n", `response rules file`},
	}
	inline := []config.ResponseRule{{Name: "inline", Code: 550, Action: "defer"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := writeRules(t, tc.yaml)
			_, err := CompileRules(inline, p)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), "response rules file "+p) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant %q", err, tc.want)
			}
		})
	}
	if _, err := CompileRules(nil, filepath.Join(t.TempDir(), "none.yaml")); err == nil || !strings.Contains(err.Error(), "response rules file:") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestInlineErrors(t *testing.T) {
	t.Parallel()
	_, err := CompileRules([]config.ResponseRule{{Name: "a", Code: 421, Action: "defer"}, {Name: "b", Text: "(", Action: "defer"}}, "")
	if err == nil || !strings.Contains(err.Error(), "response_rules[1].text: error parsing regexp") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadRulesChecksGroups(t *testing.T) {
	t.Parallel()
	p := writeRules(t, "rules:\n  - name: move\n    code: 550\n    action: rebind\n    duration: 1h\n    rebind: g2\n")
	cfg := config.Default()
	cfg.ResponseRulesFile = p
	if _, err := LoadRules(cfg); err == nil || !strings.Contains(err.Error(), `rebind: "g2" is not a binding group`) {
		t.Fatalf("err = %v", err)
	}
	cfg.BindingGroups = []config.BindingGroup{{Name: "g2"}}
	rs, err := LoadRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, fired, _ := rs.Match(Reply{Code: 550}, Where{Domain: "d.example", Site: "mx", Binding: "b1"}, t0)
	if !fired || a.Kind != ActionRebind || a.Rebind != "g2" {
		t.Fatalf("rebind action = %+v", a)
	}
}

func TestShippedConfigNamesShippedRules(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load("../../configs/mtad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The shipped config's path is relative to the repository root.
	cfg.ResponseRulesFile = filepath.Join("../..", cfg.ResponseRulesFile)
	rs, err := LoadRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Len() != shipped(t).Len() {
		t.Fatalf("%d rules through the shipped config", rs.Len())
	}
}

// FuzzRulesFile: any bytes either compile or are refused with an error
// naming the file; a compiled set matches without panicking.
func FuzzRulesFile(f *testing.F) {
	if data, err := os.ReadFile(shippedRules); err == nil {
		f.Add(data)
	}
	f.Add([]byte("rules:\n  - name: a\n    code: 421\n    action: throttle\n    duration: 1h\n    throttle: {max_message_rate: 1/m}\n"))
	f.Add([]byte("rules: []\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		src := "fuzz"
		frs, err := parseResponseRules(src, data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), src+":") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		_ = frs
		p := filepath.Join(dir, fmt.Sprintf("r%d.yaml", len(data)))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rs, err := CompileRules(nil, p)
		if err != nil {
			if !strings.Contains(err.Error(), "response rules file "+p) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		rs.Match(Reply{Code: 421, Enhanced: "4.7.0", Text: "[TSS04] x"}, Where{Domain: "d", Site: "s", Binding: "b"}, t0)
	})
}

func BenchmarkMatch(b *testing.B) {
	rs := shipped(b)
	w := Where{Domain: "example.com", Site: "mx1.example,mx2.example", Provider: "prov", Binding: "b1"}
	miss := Reply{451, "4.7.1", strings.Repeat("Temporary local problem, please try again later. ", 5)[:200], false}
	hit := Reply{421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", false}
	b.Run("miss", func(b *testing.B) {
		for b.Loop() {
			if _, _, m := rs.Match(miss, w, t0); m != "" {
				b.Fatal(m)
			}
		}
	})
	b.Run("miss-4.2.1-text", func(b *testing.B) {
		// Passes the code and enhanced filters, so the regexp runs.
		r := Reply{450, "4.2.1", miss.Text, false}
		for b.Loop() {
			rs.Match(r, w, t0)
		}
	})
	b.Run("hit", func(b *testing.B) {
		for b.Loop() {
			if _, fired, _ := rs.Match(hit, w, t0); !fired {
				b.Fatal("no fire")
			}
		}
	})
}
