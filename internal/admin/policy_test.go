package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/policy"
)

// testPolicy is the Policy the tests plug in: policy's real Shaper,
// Suspensions and Overrides (what the scheduler holds), with MX sets from a
// table instead of DNS, and a record of who acted and why.
type testPolicy struct {
	shaper   *policy.Shaper
	mx       map[string][]string
	bindings map[string]bool
	susp     *policy.Suspensions
	ovr      *policy.Overrides

	mu   sync.Mutex
	acts []string // "resume s1 by=alice reason=done"
}

func (p *testPolicy) ResolveShaping(domain, binding string) (Shaping, error) {
	mxs := p.mx[domain]
	return Shaping{Domain: domain, Binding: binding, MX: mxs, Shaping: p.shaper.Resolve(domain, mxs, binding)}, nil
}
func (p *testPolicy) HasBinding(name string) bool                    { return p.bindings[name] }
func (p *testPolicy) HasProvider(name string) bool                   { return p.shaper.HasProvider(name) }
func (p *testPolicy) Suspend(sp policy.Suspension) policy.Suspension { return p.susp.Add(sp) }
func (p *testPolicy) Suspensions(now time.Time) []policy.Suspension  { return p.susp.List(now) }
func (p *testPolicy) Throttles(now time.Time) []policy.Override      { return p.ovr.List(now) }
func (p *testPolicy) Resume(id, who, reason string) (policy.Suspension, bool) {
	p.act("resume " + id + " by=" + who + " reason=" + reason)
	return p.susp.Lift(id)
}
func (p *testPolicy) Unthrottle(scope, who, reason string) (policy.Override, bool) {
	p.act("unthrottle " + scope + " by=" + who + " reason=" + reason)
	return p.ovr.Lift(scope)
}
func (p *testPolicy) act(s string) {
	p.mu.Lock()
	p.acts = append(p.acts, s)
	p.mu.Unlock()
}
func (p *testPolicy) lastAct() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.acts) == 0 {
		return ""
	}
	return p.acts[len(p.acts)-1]
}

const testShapingYAML = `
delivery:
  retry_interval: 10m
  max_retry_interval: 2h
bindings:
  - name: b1
  - name: b2
shaping:
  default:
    max_connections: 8
    max_message_rate: "100/s"
  providers:
    - name: bigmail
      match_mx: [".bigmail.test"]
      max_connections: 20
      provider_max_message_rate: "3000/m"
  domains:
    - match: "pa.test"
      max_message_rate: "10/s"
      bindings:
        - binding: b2
          max_connections: 3
          idle_timeout: 7s
`

func newTestPolicy(t *testing.T) *testPolicy {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mtad.yaml")
	if err := os.WriteFile(path, []byte(testShapingYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testPolicy{
		shaper:   sh,
		mx:       map[string][]string{"pa.test": {"mx2.bigmail.test", "mx1.bigmail.test"}},
		bindings: map[string]bool{"b1": true, "b2": true},
		susp:     policy.NewSuspensions(),
		ovr:      policy.NewOverrides(),
	}
}

// call sends a request and decodes the JSON answer, checking that every
// answer is JSON.
func call(t *testing.T, method, url, ctype, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: content type %q", method, url, ct)
	}
	var v map[string]any
	if method != http.MethodHead {
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return resp, v
}

func errText(v map[string]any) string { s, _ := v["error"].(string); return s }

func TestShapingEndpoint(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t)
	base := startServer(t, Options{Policy: p})

	resp, v := call(t, http.MethodGet, base+"/api/v1/shaping?domain=PA.test.", "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("resolve: %d %v", resp.StatusCode, v)
	}
	if v["domain"] != "pa.test" || v["binding"] != "" || v["provider"] != "bigmail" ||
		v["site"] != "mx1.bigmail.test,mx2.bigmail.test" {
		t.Errorf("resolve header fields: %v", v)
	}
	if mxs, _ := v["mx"].([]any); len(mxs) != 2 {
		t.Errorf("mx = %v, want the two hosts", v["mx"])
	}
	want := map[string]keyValue{
		"max_connections":           {20.0, "provider bigmail"},
		"max_message_rate":          {"10/s", "domain pa.test"},
		"provider_max_message_rate": {"3000/m", "provider bigmail"},
		"max_connection_rate":       {"unlimited", "built-in"},
		"retry_interval":            {"10m0s", "delivery"},
		"idle_timeout":              {config.Default().Delivery.IdleTimeout.String(), "delivery"},
		"mx_rollup":                 {true, "built-in"},
	}
	checkKeys := func(v map[string]any, want map[string]keyValue) {
		t.Helper()
		for k, w := range want {
			got, _ := v[k].(map[string]any)
			if got["value"] != w.Value || got["source"] != w.Source {
				t.Errorf("%s = %v, want value %v source %q", k, got, w.Value, w.Source)
			}
		}
	}
	checkKeys(v, want)
	// Every key the resolution has a source for is in the answer, with
	// that source: a key added to policy.Shaping shows up here or fails.
	full := p.shaper.Resolve("pa.test", p.mx["pa.test"], "")
	for k, src := range full.Sources {
		got, _ := v[k].(map[string]any)
		if got == nil || got["source"] != src {
			t.Errorf("key %s: answer %v, want source %q", k, got, src)
		}
	}

	// The binding narrowing applies to that binding only.
	resp, v = call(t, http.MethodGet, base+"/api/v1/shaping?domain=pa.test&binding=b2", "", "")
	if resp.StatusCode != 200 || v["binding"] != "b2" {
		t.Fatalf("resolve b2: %d %v", resp.StatusCode, v)
	}
	checkKeys(v, map[string]keyValue{
		"max_connections":  {3.0, "domain pa.test binding b2"},
		"idle_timeout":     {"7s", "domain pa.test binding b2"},
		"max_message_rate": {"10/s", "domain pa.test"},
	})
	_, v = call(t, http.MethodGet, base+"/api/v1/shaping?domain=pa.test&binding=b1", "", "")
	checkKeys(v, map[string]keyValue{"max_connections": {20.0, "provider bigmail"}})

	// A domain with no known MX set: no site, no provider by MX; an IDN
	// is resolved under its A-label, as the queue keys it.
	_, v = call(t, http.MethodGet, base+"/api/v1/shaping?domain=B%C3%BCcher.example", "", "")
	if v["domain"] != "xn--bcher-kva.example" || v["site"] != "domain:xn--bcher-kva.example" || v["provider"] != "" {
		t.Errorf("IDN: %v", v)
	}
	if mxs, ok := v["mx"].([]any); !ok || len(mxs) != 0 {
		t.Errorf("unresolved mx = %#v, want []", v["mx"])
	}

	for _, c := range []struct {
		query string
		code  int
		err   string
	}{
		{"", 400, "domain: required"},
		{"?domain=", 400, "domain: required"},
		{"?binding=b1", 400, "domain: required"},
		{"?domain=a..b", 400, "domain: "},
		{"?domain=-x.test", 400, "domain: "},
		{"?domain=%5B127.0.0.1%5D", 400, "domain: an address literal"},
		{"?domain=a.test&domain=b.test", 400, "domain: given 2 times"},
		{"?domain=a.test&bindng=b1", 400, "bindng: unknown parameter"},
		{"?domain=a.test&binding=b9", 404, `binding: no binding "b9"`},
		{"?domain=a.test&binding=b%0a1", 400, "binding: control character"},
	} {
		resp, v := call(t, http.MethodGet, base+"/api/v1/shaping"+c.query, "", "")
		if resp.StatusCode != c.code || !strings.HasPrefix(errText(v), c.err) {
			t.Errorf("GET shaping%s: %d %q, want %d %q…", c.query, resp.StatusCode, errText(v), c.code, c.err)
		}
	}
	resp, v = call(t, http.MethodPost, base+"/api/v1/shaping?domain=pa.test", "", "")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || !strings.Contains(errText(v), "POST") {
		t.Errorf("POST shaping: %d Allow %q %v", resp.StatusCode, resp.Header.Get("Allow"), v)
	}
}

func TestSuspensionsEndpoint(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t)
	base := startServer(t, Options{Policy: p})
	url := base + "/api/v1/suspensions"

	resp, v := call(t, http.MethodGet, url, "", "")
	if l, ok := v["suspensions"].([]any); resp.StatusCode != 200 || !ok || len(l) != 0 {
		t.Fatalf("empty list: %d %#v", resp.StatusCode, v)
	}

	before := time.Now()
	resp, v = call(t, http.MethodPost, url, "application/json",
		`{"scope":"domain","name":"PA.test","duration":"2h","reason":"abuse desk asked","by":"alice"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("suspend: %d %v", resp.StatusCode, v)
	}
	id, _ := v["id"].(string)
	if id == "" || resp.Header.Get("Location") != "/api/v1/suspensions/"+id {
		t.Errorf("suspend: id %q Location %q", id, resp.Header.Get("Location"))
	}
	if v["scope"] != "domain" || v["name"] != "pa.test" || v["source"] != "operator" ||
		v["reason"] != "abuse desk asked (by alice)" || v["binding"] != "" {
		t.Errorf("suspend answer: %v", v)
	}
	until, err := time.Parse(time.RFC3339Nano, v["until"].(string))
	if err != nil || until.Before(before.Add(2*time.Hour)) || until.After(time.Now().Add(2*time.Hour)) {
		t.Errorf("until %v (%v), want 2h from the request", v["until"], err)
	}
	// It is in force for the pair, as the scheduler checks it.
	if _, ok := p.susp.Check(time.Now(), "pa.test", "", "", "b1"); !ok {
		t.Errorf("suspension %s not in force for pa.test", id)
	}

	// A shorter suspension of the same scope keeps the longer one: 200.
	resp, v = call(t, http.MethodPost, url, "application/json", `{"scope":"domain","name":"pa.test","duration":"1h","reason":"again"}`)
	if resp.StatusCode != 200 || v["id"] != id {
		t.Errorf("shorter suspension: %d %v, want 200 and %s kept", resp.StatusCode, v, id)
	}
	// Other scopes, each normalised as the scheduler keys them.
	for _, c := range []struct{ body, scope, name, binding string }{
		{`{"scope":"pair","name":"pb.test","binding":"b2","duration":"30m","reason":"r"}`, "pair", "pb.test", "b2"},
		{`{"scope":"site","name":"MX2.bigmail.test, mx1.bigmail.test.","duration":"30m","reason":"r"}`, "site", "mx1.bigmail.test,mx2.bigmail.test", ""},
		{`{"scope":"site","name":"domain:Solo.test","binding":"b1","duration":"30m","reason":"r"}`, "site", "domain:solo.test", "b1"},
		{`{"scope":"provider","name":"bigmail","duration":"720h","reason":"r"}`, "provider", "bigmail", ""},
		{`{"scope":"binding","name":"b1","duration":"1h","reason":"r"}`, "binding", "", "b1"},
	} {
		resp, v := call(t, http.MethodPost, url, "application/json; charset=utf-8", c.body)
		if resp.StatusCode != 201 || v["scope"] != c.scope || v["name"] != c.name || v["binding"] != c.binding {
			t.Errorf("POST %s: %d %v, want 201 %s %q %q", c.body, resp.StatusCode, v, c.scope, c.name, c.binding)
		}
	}
	_, v = call(t, http.MethodGet, url, "", "")
	if l, _ := v["suspensions"].([]any); len(l) != 6 {
		t.Errorf("list: %d suspensions, want 6: %v", len(l), v)
	}

	resp, v = call(t, http.MethodDelete, url+"/"+id+"?by=bob&reason=cleared", "", "")
	if resp.StatusCode != 200 || v["id"] != id {
		t.Errorf("resume: %d %v", resp.StatusCode, v)
	}
	if got, want := p.lastAct(), "resume "+id+" by=bob reason=cleared"; got != want {
		t.Errorf("resume passed %q, want %q", got, want)
	}
	// (From b2: b1 is suspended as a binding.)
	if sp, ok := p.susp.Check(time.Now(), "pa.test", "", "", "b2"); ok {
		t.Errorf("pa.test still suspended after resume: %+v", sp)
	}
	resp, v = call(t, http.MethodDelete, url+"/"+id, "", "")
	if resp.StatusCode != 404 || !strings.Contains(errText(v), id) {
		t.Errorf("resume again: %d %v, want 404 naming %s", resp.StatusCode, v, id)
	}
	if got := p.lastAct(); !strings.HasSuffix(got, "by=operator reason=") {
		t.Errorf("resume without by passed %q, want by=operator", got)
	}
	resp, v = call(t, http.MethodDelete, url+"/"+id+"?who=x", "", "")
	if resp.StatusCode != 400 || !strings.HasPrefix(errText(v), "who: unknown parameter") {
		t.Errorf("resume ?who: %d %v", resp.StatusCode, v)
	}

	resp, v = call(t, http.MethodPut, url, "", "{}")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD, POST" {
		t.Errorf("PUT: %d Allow %q %v", resp.StatusCode, resp.Header.Get("Allow"), v)
	}
	resp, _ = call(t, http.MethodGet, url+"/"+id, "", "")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "DELETE" {
		t.Errorf("GET one: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	for _, ct := range []string{"text/plain", ""} {
		// No Content-Type is refused too: a browser's cross-site POST
		// without a preflight can send none, never JSON's.
		resp, v = call(t, http.MethodPost, url, ct, `{"scope":"domain","name":"x.test","duration":"1h","reason":"r"}`)
		if resp.StatusCode != 415 || !strings.Contains(errText(v), "application/json") {
			t.Errorf("Content-Type %q: %d %v", ct, resp.StatusCode, v)
		}
	}
	big := `{"scope":"domain","name":"a.test","duration":"1h","reason":"` + strings.Repeat("x", maxBody) + `"}`
	resp, v = call(t, http.MethodPost, url, "application/json", big)
	if resp.StatusCode != 413 || !strings.HasPrefix(errText(v), "body: longer than") {
		t.Errorf("big body: %d %v", resp.StatusCode, v)
	}
}

// TestSuspendRefusals: each bad request is a 400 naming its field, and
// changes nothing.
func TestSuspendRefusals(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t)
	base := startServer(t, Options{Policy: p})
	for _, c := range []struct{ body, err string }{
		{``, "body: empty"},
		{`{"scope":"domain"`, "body: truncated JSON"},
		{`{"scope":"domain",}`, "body: not JSON"},
		{`[1]`, "body: must be a JSON object"},
		{`{"scope":"domain","name":"a.test","duration":"1h","reason":"r"} {}`, "body: more than one JSON value"},
		{`{"scope":"domain","name":"a.test","duration":"1h","reason":"r","force":true}`, "force: unknown field"},
		{`{"scope":"domain","name":"a.test","duration":7200,"reason":"r"}`, "duration: must be a string"},
		{`{"name":"a.test","duration":"1h","reason":"r"}`, "scope: required"},
		{`{"scope":"mx","name":"a.test","duration":"1h","reason":"r"}`, `scope: "mx" is not one of`},
		{`{"scope":"domain","duration":"1h","reason":"r"}`, "name: required"},
		{`{"scope":"domain","name":"a..test","duration":"1h","reason":"r"}`, "name: "},
		{`{"scope":"domain","name":"[127.0.0.1]","duration":"1h","reason":"r"}`, "name: an address literal"},
		{`{"scope":"pair","name":"a.test","duration":"1h","reason":"r"}`, "binding: required for scope pair"},
		{`{"scope":"domain","name":"a.test","binding":"b9","duration":"1h","reason":"r"}`, `binding: no binding "b9"`},
		{`{"scope":"site","duration":"1h","reason":"r"}`, "name: required"},
		{`{"scope":"site","name":"mx1.a,,mx2.a","duration":"1h","reason":"r"}`, `name: MX host ""`},
		{`{"scope":"provider","name":" ","duration":"1h","reason":"r"}`, "name: required"},
		{`{"scope":"provider","name":"gmail","duration":"1h","reason":"r"}`, `name: no provider "gmail"`},
		{`{"scope":"binding","duration":"1h","reason":"r"}`, "name: required"},
		{`{"scope":"binding","name":"b9","duration":"1h","reason":"r"}`, `binding: no binding "b9"`},
		{`{"scope":"binding","name":"b1","binding":"b2","duration":"1h","reason":"r"}`, "binding: \"b2\" differs"},
		{`{"scope":"domain","name":"a.test","reason":"r"}`, "duration: required"},
		{`{"scope":"domain","name":"a.test","duration":"2 hours","reason":"r"}`, `duration: "2 hours" is not a duration`},
		{`{"scope":"domain","name":"a.test","duration":"-1h","reason":"r"}`, "duration: \"-1h\" is not positive"},
		{`{"scope":"domain","name":"a.test","duration":"0s","reason":"r"}`, "duration: \"0s\" is not positive"},
		{`{"scope":"domain","name":"a.test","duration":"721h","reason":"r"}`, "duration: \"721h\" is longer than 720h0m0s"},
		{`{"scope":"domain","name":"a.test","duration":"1h"}`, "reason: required"},
		{`{"scope":"domain","name":"a.test","duration":"1h","reason":"a\u0007b"}`, "reason: control character U+0007"},
		{`{"scope":"domain","name":"a.test","duration":"1h","reason":"` + strings.Repeat("r", maxText+1) + `"}`, "reason: longer than"},
		{`{"scope":"domain","name":"a.test","duration":"1h","reason":"r","by":"\ud800"}`, ""}, // JSON turns a lone surrogate into U+FFFD: accepted
	} {
		resp, v := call(t, http.MethodPost, base+"/api/v1/suspensions", "application/json", c.body)
		if c.err == "" {
			if resp.StatusCode != 201 {
				t.Errorf("POST %.80s: %d %v, want 201", c.body, resp.StatusCode, v)
			}
			continue
		}
		if resp.StatusCode != 400 || !strings.HasPrefix(errText(v), c.err) {
			t.Errorf("POST %.80s: %d %q, want 400 %q…", c.body, resp.StatusCode, errText(v), c.err)
		}
	}
	if n := len(p.susp.List(time.Now())); n != 1 {
		t.Errorf("%d suspensions after the refusals, want only the accepted one", n)
	}
}

func TestThrottlesEndpoint(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t)
	base := startServer(t, Options{Policy: p})
	now := time.Now()
	rate := policy.Rate{N: 1, Per: time.Minute}
	conns := 1
	site := policy.ScopeKey(policy.ScopeSite, "mx1.bigmail.test,mx2.bigmail.test", "b1")
	p.ovr.Set(policy.Override{Rule: "yahoo-tss04", Scope: site, MaxMessageRate: &rate, MaxConnections: &conns,
		Start: now, End: now.Add(time.Hour), Ramp: 30 * time.Minute})
	dom := policy.ScopeKey(policy.ScopeDomain, "pa.test", "")
	p.ovr.Set(policy.Override{Rule: "slow", Scope: dom, MaxConnections: &conns, Start: now, End: now.Add(time.Minute)})

	resp, v := call(t, http.MethodGet, base+"/api/v1/throttles", "", "")
	l, _ := v["throttles"].([]any)
	if resp.StatusCode != 200 || len(l) != 2 {
		t.Fatalf("list: %d %v", resp.StatusCode, v)
	}
	first, second := l[0].(map[string]any), l[1].(map[string]any)
	if first["scope"] != dom || first["kind"] != "domain" || first["name"] != "pa.test" || first["binding"] != "" ||
		first["max_connections"] != 1.0 || first["max_message_rate"] != nil || first["ramp"] != "0s" {
		t.Errorf("first (soonest to end): %v", first)
	}
	if second["scope"] != site || second["kind"] != "site" || second["name"] != "mx1.bigmail.test,mx2.bigmail.test" ||
		second["binding"] != "b1" || second["rule"] != "yahoo-tss04" || second["max_message_rate"] != "1/m" ||
		second["ramp"] != "30m0s" {
		t.Errorf("second: %v", second)
	}
	until, _ := time.Parse(time.RFC3339Nano, second["until"].(string))
	if !until.Equal(now.Add(90 * time.Minute).UTC()) {
		t.Errorf("until %v, want end + ramp %v", until, now.Add(90*time.Minute).UTC())
	}

	q := "?scope=" + strings.ReplaceAll(site, "|", "%7C") + "&by=carol&reason=receiver+fixed"
	resp, v = call(t, http.MethodDelete, base+"/api/v1/throttles"+q, "", "")
	if resp.StatusCode != 200 || v["scope"] != site {
		t.Errorf("unthrottle: %d %v", resp.StatusCode, v)
	}
	if got, want := p.lastAct(), "unthrottle "+site+" by=carol reason=receiver fixed"; got != want {
		t.Errorf("unthrottle passed %q, want %q", got, want)
	}
	if p.ovr.Get(site, time.Now()) != nil {
		t.Errorf("throttle on %s still in force", site)
	}
	resp, v = call(t, http.MethodDelete, base+"/api/v1/throttles"+q, "", "")
	if resp.StatusCode != 404 || !strings.HasPrefix(errText(v), "scope: no throttle") {
		t.Errorf("unthrottle again: %d %v", resp.StatusCode, v)
	}
	resp, v = call(t, http.MethodDelete, base+"/api/v1/throttles", "", "")
	if resp.StatusCode != 400 || !strings.HasPrefix(errText(v), "scope: required") {
		t.Errorf("unthrottle without scope: %d %v", resp.StatusCode, v)
	}
	resp, _ = call(t, http.MethodPost, base+"/api/v1/throttles", "", "")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD, DELETE" {
		t.Errorf("POST throttles: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, _ = call(t, http.MethodHead, base+"/api/v1/throttles", "", "")
	if resp.StatusCode != 200 {
		t.Errorf("HEAD throttles: %d", resp.StatusCode)
	}
}

// TestNoPolicy: without a Policy the endpoints are not there.
func TestNoPolicy(t *testing.T) {
	t.Parallel()
	base := startServer(t, Options{})
	resp, v := call(t, http.MethodGet, base+"/api/v1/suspensions", "", "")
	if resp.StatusCode != 404 || !strings.Contains(errText(v), "/api/v1/suspensions") {
		t.Errorf("no policy: %d %v", resp.StatusCode, v)
	}
}

// FuzzParseSuspend: any body is either refused naming a field, or gives a
// suspension the scheduler can hold: a known kind, a name where the kind
// needs one, a known binding, and an end within MaxSuspension.
func FuzzParseSuspend(f *testing.F) {
	f.Add([]byte(`{"scope":"domain","name":"a.test","duration":"2h","reason":"r","by":"alice"}`))
	f.Add([]byte(`{"scope":"binding","name":"b1","duration":"1s","reason":"r"}`))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	known := func(b string) bool { return b == "b1" || b == "b2" }
	provider := func(p string) bool { return p == "bigmail" }
	f.Fuzz(func(t *testing.T, body []byte) {
		sp, err := parseSuspend(body, now, known, provider)
		if err != nil {
			fe, ok := err.(*fieldError)
			if !ok || fe.field == "" || fe.msg == "" {
				t.Fatalf("error %#v does not name a field", err)
			}
			return
		}
		switch sp.Kind {
		case policy.ScopeDomain, policy.ScopeSite, policy.ScopeProvider, policy.ScopePair:
			if sp.Name == "" {
				t.Fatalf("%s suspension without a name: %+v", sp.Kind, sp)
			}
		case policy.ScopeBinding:
			if sp.Binding == "" {
				t.Fatalf("binding suspension without a binding: %+v", sp)
			}
		default:
			t.Fatalf("kind %q accepted", sp.Kind)
		}
		if sp.Binding != "" && !known(sp.Binding) {
			t.Fatalf("unknown binding %q accepted", sp.Binding)
		}
		if d := sp.Until.Sub(sp.Start); !sp.Start.Equal(now) || d <= 0 || d > MaxSuspension {
			t.Fatalf("span %v from %v accepted", d, sp.Start)
		}
		if sp.Source != policy.SourceOperator || strings.TrimSpace(sp.Reason) == "" {
			t.Fatalf("source %q reason %q", sp.Source, sp.Reason)
		}
		if bytes.ContainsAny([]byte(sp.Reason+sp.Name+sp.Binding), "\r\n\x00") {
			t.Fatalf("control characters accepted: %+v", sp)
		}
	})
}
