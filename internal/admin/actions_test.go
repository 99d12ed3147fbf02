package admin

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/mx"
)

// testActions is the Actions the tests plug in: it records each order it
// is given, so a test sees exactly what the API passed on after its
// checks. The scheduler's own tests cover what the orders do.
type testActions struct {
	mu     sync.Mutex
	orders []string
}

func (a *testActions) Cancel(c CancelOrder) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders = append(a.orders, fmt.Sprintf("cancel id=%s domain=%s binding=%s sender=%s reason=%s by=%s dsn=%t",
		c.QueueID, c.Domain, c.Binding, c.Sender, c.Reason, c.By, c.DSN))
	if c.QueueID == "01GONE" {
		return 0, fmt.Errorf("cancel %s: %w", c.QueueID, ErrNotQueued)
	}
	return len(a.orders), nil
}

func (a *testActions) Bounce(c CancelOrder) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders = append(a.orders, fmt.Sprintf("bounce id=%s domain=%s binding=%s sender=%s reason=%s by=%s",
		c.QueueID, c.Domain, c.Binding, c.Sender, c.Reason, c.By))
	if c.QueueID == "01GONE" {
		return 0, fmt.Errorf("bounce %s: %w", c.QueueID, ErrNotQueued)
	}
	return len(a.orders), nil
}

func (a *testActions) Rebind(o RebindOrder) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders = append(a.orders, fmt.Sprintf("rebind domain=%s binding=%s group=%s duration=%s reason=%s by=%s",
		o.Domain, o.Binding, o.Group, o.Duration, o.Reason, o.By))
	return len(a.orders), nil
}

func (a *testActions) HasGroup(name string) bool { return name == "clean" }

func (a *testActions) Flush(domain, binding, by string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders = append(a.orders, fmt.Sprintf("flush domain=%s binding=%s by=%s", domain, binding, by))
	return len(a.orders), nil
}

func (a *testActions) HasBinding(name string) bool { return name == "b1" }

func (a *testActions) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.orders) == 0 {
		return ""
	}
	return a.orders[len(a.orders)-1]
}

func (a *testActions) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.orders)
}

func TestCancelFlushAccepted(t *testing.T) {
	t.Parallel()
	a := &testActions{}
	base := startServer(t, Options{Actions: a})
	for _, c := range []struct {
		path, body, order, key string
	}{
		{"/api/v1/cancel", `{"queue_id":"01ABC","reason":"wrong list","by":"alice","dsn":true}`,
			"cancel id=01ABC domain= binding= sender= reason=wrong list by=alice dsn=true", "cancelled"},
		{"/api/v1/cancel", `{"domain":"Example.TEST.","reason":" complaint "}`,
			"cancel id= domain=example.test binding= sender= reason=complaint by=operator dsn=false", "cancelled"},
		{"/api/v1/cancel", `{"sender":"news@src.test","reason":"runaway"}`,
			"cancel id= domain= binding= sender=news@src.test reason=runaway by=operator dsn=false", "cancelled"},
		{"/api/v1/cancel", `{"domain":"x.TEST","binding":"b1","reason":"pair blocked","by":"gus"}`,
			"cancel id= domain=x.test binding=b1 sender= reason=pair blocked by=gus dsn=false", "cancelled"},
		{"/api/v1/bounce", `{"queue_id":"01ABC","reason":"spam","by":"erin"}`,
			"bounce id=01ABC domain= binding= sender= reason=spam by=erin", "bounced"},
		{"/api/v1/bounce", `{"domain":"X.test","binding":"b1","reason":"listed"}`,
			"bounce id= domain=x.test binding=b1 sender= reason=listed by=operator", "bounced"},
		{"/api/v1/bounce", `{"sender":"news@src.test","reason":"runaway"}`,
			"bounce id= domain= binding= sender=news@src.test reason=runaway by=operator", "bounced"},
		{"/api/v1/rebind", `{"domain":"X.test","group":"clean","duration":"2h","reason":"listed","by":"hal"}`,
			"rebind domain=x.test binding= group=clean duration=2h0m0s reason=listed by=hal", "moved"},
		{"/api/v1/rebind", `{"domain":"x.test","binding":"b1","group":"clean","reason":"listed"}`,
			"rebind domain=x.test binding=b1 group=clean duration=0s reason=listed by=operator", "moved"},
		{"/api/v1/flush", `{}`, "flush domain= binding= by=operator", "flushed"},
		{"/api/v1/flush", `{"domain":"X.test","binding":"b1","by":"bob"}`, "flush domain=x.test binding=b1 by=bob", "flushed"},
	} {
		resp, v := call(t, http.MethodPost, base+c.path, "application/json", c.body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %v", c.path, c.body, resp.StatusCode, v)
		}
		if got := a.last(); got != c.order {
			t.Errorf("%s %s passed on %q, want %q", c.path, c.body, got, c.order)
		}
		if n, ok := v[c.key].(float64); !ok || int(n) != a.count() {
			t.Errorf("%s %s answered %v, want {%q: %d}", c.path, c.body, v, c.key, a.count())
		}
	}
	for _, path := range []string{"/api/v1/cancel", "/api/v1/bounce"} {
		resp, v := call(t, http.MethodPost, base+path, "application/json", `{"queue_id":"01GONE","reason":"r"}`)
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(errText(v), "queue_id: ") {
			t.Errorf("%s of an id not queued: %d %v, want 404 naming queue_id", path, resp.StatusCode, v)
		}
	}
	// A rebind with a duration says until when; one without does not.
	if _, v := call(t, http.MethodPost, base+"/api/v1/rebind", "application/json",
		`{"domain":"x.test","group":"clean","duration":"1h","reason":"r"}`); v["until"] == nil {
		t.Errorf("rebind for an hour answered %v, want an until", v)
	}
	if _, v := call(t, http.MethodPost, base+"/api/v1/rebind", "application/json",
		`{"domain":"x.test","group":"clean","reason":"r"}`); v["until"] != nil {
		t.Errorf("rebind without a duration answered %v, want no until", v)
	}
}

// TestCancelFlushRefused: each bad request gets 4xx naming its field,
// and nothing reaches the scheduler.
func TestCancelFlushRefused(t *testing.T) {
	t.Parallel()
	a := &testActions{}
	base := startServer(t, Options{Actions: a})
	for _, c := range []struct {
		path, ctype, body string
		code              int
		field             string
	}{
		{"/api/v1/cancel", "text/plain", `{"queue_id":"x","reason":"r"}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{"/api/v1/cancel", "application/json", ``, http.StatusBadRequest, "body: "},
		{"/api/v1/cancel", "application/json", `{"reason":"r"}`, http.StatusBadRequest, "queue_id: required"},
		{"/api/v1/cancel", "application/json", `{"queue_id":"x","domain":"a.test","reason":"r"}`, http.StatusBadRequest, "domain: given with queue_id"},
		{"/api/v1/cancel", "application/json", `{"domain":"a.test","sender":"x@y.test","reason":"r"}`, http.StatusBadRequest, "sender: given with domain"},
		{"/api/v1/cancel", "application/json", `{"domain":"a..test","reason":"r"}`, http.StatusBadRequest, "domain: "},
		{"/api/v1/cancel", "application/json", `{"sender":"nobody","reason":"r"}`, http.StatusBadRequest, "sender: "},
		{"/api/v1/cancel", "application/json", `{"sender":"<>","reason":"r"}`, http.StatusBadRequest, "sender: "},
		{"/api/v1/cancel", "application/json", `{"queue_id":"x"}`, http.StatusBadRequest, "reason: required"},
		{"/api/v1/cancel", "application/json", `{"queue_id":"x","reason":"a\nb"}`, http.StatusBadRequest, "reason: control"},
		{"/api/v1/cancel", "application/json", `{"queue_id":"x","reason":"r","dsn":"yes"}`, http.StatusBadRequest, "dsn: must be a bool"},
		{"/api/v1/cancel", "application/json", `{"queue_id":"x","reason":"r","bounce":true}`, http.StatusBadRequest, "bounce: unknown field"},
		{"/api/v1/cancel", "application/json", `{"binding":"b1","reason":"r"}`, http.StatusBadRequest, "queue_id: required"},
		{"/api/v1/cancel", "application/json", `{"sender":"a@b.test","binding":"b1","reason":"r"}`, http.StatusBadRequest, "binding: only with domain"},
		{"/api/v1/cancel", "application/json", `{"domain":"a.test","binding":"nosuch","reason":"r"}`, http.StatusBadRequest, `binding: no binding "nosuch"`},
		{"/api/v1/bounce", "text/plain", `{"queue_id":"x","reason":"r"}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{"/api/v1/bounce", "application/json", `{"reason":"r"}`, http.StatusBadRequest, "queue_id: required"},
		{"/api/v1/bounce", "application/json", `{"queue_id":"x"}`, http.StatusBadRequest, "reason: required"},
		{"/api/v1/bounce", "application/json", `{"queue_id":"x","reason":"r","dsn":false}`, http.StatusBadRequest, "dsn: a bounce always"},
		{"/api/v1/bounce", "application/json", `{"queue_id":"x","sender":"a@b.test","reason":"r"}`, http.StatusBadRequest, "sender: given with queue_id"},
		{"/api/v1/bounce", "application/json", `{"domain":"a.test","binding":"nosuch","reason":"r"}`, http.StatusBadRequest, `binding: no binding "nosuch"`},
		{"/api/v1/bounce", "application/json", `{"sender":"x","reason":"r"}`, http.StatusBadRequest, "sender: "},
		{"/api/v1/bounce", "application/json", `{"queue_id":"x","reason":"r","by":"a\u0000"}`, http.StatusBadRequest, "by: control"},
		{"/api/v1/rebind", "text/plain", `{}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{"/api/v1/rebind", "application/json", `{"group":"clean","reason":"r"}`, http.StatusBadRequest, "domain: required"},
		{"/api/v1/rebind", "application/json", `{"domain":"a..test","group":"clean","reason":"r"}`, http.StatusBadRequest, "domain: "},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","binding":"nosuch","group":"clean","reason":"r"}`, http.StatusBadRequest, `binding: no binding "nosuch"`},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","reason":"r"}`, http.StatusBadRequest, "group: required"},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"dirty","reason":"r"}`, http.StatusBadRequest, `group: no binding group "dirty"`},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"clean","duration":"soon","reason":"r"}`, http.StatusBadRequest, "duration: "},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"clean","duration":"-1h","reason":"r"}`, http.StatusBadRequest, "duration: "},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"clean","duration":"9000h","reason":"r"}`, http.StatusBadRequest, "duration: "},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"clean"}`, http.StatusBadRequest, "reason: required"},
		{"/api/v1/rebind", "application/json", `{"domain":"a.test","group":"clean","reason":"r","until":"x"}`, http.StatusBadRequest, "until: unknown field"},
		{"/api/v1/flush", "application/json", `{"binding":"nosuch"}`, http.StatusBadRequest, `binding: no binding "nosuch"`},
		{"/api/v1/flush", "application/json", `{"domain":"-bad-.test"}`, http.StatusBadRequest, "domain: "},
		{"/api/v1/flush", "", `{}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{"/api/v1/flush", "application/json", `[]`, http.StatusBadRequest, "body: must be a JSON object"},
		{"/api/v1/flush", "application/json", ` null `, http.StatusBadRequest, "body: must be a JSON object"},
	} {
		resp, v := call(t, http.MethodPost, base+c.path, c.ctype, c.body)
		if resp.StatusCode != c.code || !strings.HasPrefix(errText(v), c.field) {
			t.Errorf("%s %q: %d %q, want %d starting %q", c.path, c.body, resp.StatusCode, errText(v), c.code, c.field)
		}
	}
	if resp, _ := call(t, http.MethodGet, base+"/api/v1/flush", "", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /api/v1/flush: %d, want 405", resp.StatusCode)
	}
	if n := a.count(); n != 0 {
		t.Errorf("%d orders reached the scheduler: %s", n, a.last())
	}
}

// TestActionsOff: without Actions the endpoints do not exist.
func TestActionsOff(t *testing.T) {
	t.Parallel()
	base := startServer(t, Options{})
	for _, p := range []string{"/api/v1/cancel", "/api/v1/bounce", "/api/v1/rebind", "/api/v1/quarantine/01X/reinject"} {
		if resp, _ := call(t, http.MethodPost, base+p, "application/json", `{}`); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s without Actions: %d, want 404", p, resp.StatusCode)
		}
	}
}

// FuzzParseCancel: any body is refused naming a field, or gives an order
// with exactly one selector, a domain in canonical form and a reason.
func FuzzParseCancel(f *testing.F) {
	f.Add([]byte(`{"queue_id":"01ABC","reason":"r","by":"alice","dsn":true}`))
	f.Add([]byte(`{"domain":"Example.TEST.","reason":"r"}`))
	f.Add([]byte(`{"domain":"x.test","binding":"b1","reason":"r"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := parseCancel(body, "tok", "cancel", func(n string) bool { return n == "b1" })
		if err != nil {
			if fe, ok := err.(*fieldError); !ok || fe.field == "" || fe.msg == "" {
				t.Fatalf("error %#v does not name a field", err)
			}
			return
		}
		set := 0
		for _, v := range []string{c.QueueID, c.Domain, c.Sender} {
			if v != "" {
				set++
			}
		}
		if set != 1 || c.Reason == "" || c.By == "" || (c.Binding != "" && (c.Binding != "b1" || c.Domain == "")) {
			t.Fatalf("order %+v accepted", c)
		}
		if c.Domain != "" {
			if d, err := mx.Canonical(c.Domain); err != nil || d != c.Domain {
				t.Fatalf("domain %q not canonical (%q, %v)", c.Domain, d, err)
			}
		}
	})
}

// FuzzParseFlush: any body is refused naming a field, or gives a known
// binding (or none) and a canonical domain (or none).
func FuzzParseFlush(f *testing.F) {
	f.Add([]byte(`{"domain":"X.test","binding":"b1","by":"bob"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		dom, b, by, err := parseFlush(body, "", func(n string) bool { return n == "b1" })
		if err != nil {
			if fe, ok := err.(*fieldError); !ok || fe.field == "" || fe.msg == "" {
				t.Fatalf("error %#v does not name a field", err)
			}
			return
		}
		if (b != "" && b != "b1") || by == "" {
			t.Fatalf("binding %q by %q accepted", b, by)
		}
		if dom != "" {
			if d, err := mx.Canonical(dom); err != nil || d != dom {
				t.Fatalf("domain %q not canonical (%q, %v)", dom, d, err)
			}
		}
	})
}

// FuzzParseRebind: any body is refused naming a field, or gives a
// canonical domain, a known binding (or none), a known group, a duration
// in range and a reason.
func FuzzParseRebind(f *testing.F) {
	f.Add([]byte(`{"domain":"X.test","group":"clean","duration":"2h","reason":"r","by":"hal"}`))
	f.Add([]byte(`{"domain":"x.test","binding":"b1","group":"clean","reason":"r"}`))
	a := &testActions{}
	now := time.Unix(1700000000, 0)
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := parseRebind(body, "", now, a.HasBinding, a)
		if err != nil {
			if fe, ok := err.(*fieldError); !ok || fe.field == "" || fe.msg == "" {
				t.Fatalf("error %#v does not name a field", err)
			}
			return
		}
		if o.Group != "clean" || (o.Binding != "" && o.Binding != "b1") || o.Reason == "" || o.By == "" ||
			o.Duration < 0 || o.Duration > MaxRebind || (o.Duration > 0) != !o.Until.IsZero() {
			t.Fatalf("order %+v accepted", o)
		}
		if d, err := mx.Canonical(o.Domain); err != nil || d != o.Domain {
			t.Fatalf("domain %q not canonical (%q, %v)", o.Domain, d, err)
		}
	})
}

// staleActions answers every order as the scheduler does when a reload
// removed, between the API's check and the order, the binding or group
// the order names.
type staleActions struct {
	testActions
	err error
}

func (a *staleActions) Cancel(CancelOrder) (int, error) {
	return 0, fmt.Errorf("scheduler: cancel: %w", a.err)
}
func (a *staleActions) Bounce(CancelOrder) (int, error) {
	return 0, fmt.Errorf("scheduler: bounce: %w", a.err)
}
func (a *staleActions) Rebind(RebindOrder) (int, error) {
	return 0, fmt.Errorf("scheduler: rebind: %w", a.err)
}
func (a *staleActions) Flush(string, string, string) (int, error) {
	return 0, fmt.Errorf("scheduler: flush: %w", a.err)
}

// TestActionRacedReload: an order the API checked but a reload made
// stale before the scheduler applied it is the operator's input gone
// bad, answered 400 naming the field, not 500.
func TestActionRacedReload(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err   error
		field string
	}{
		{ErrUnknownBinding, "binding: "},
		{ErrUnknownGroup, "group: "},
		{ErrBadSelector, "selector: "},
	} {
		base := startServer(t, Options{Actions: &staleActions{err: c.err}})
		for _, r := range []struct{ path, body string }{
			{"/api/v1/cancel", `{"domain":"x.test","binding":"b1","reason":"r"}`},
			{"/api/v1/bounce", `{"domain":"x.test","binding":"b1","reason":"r"}`},
			{"/api/v1/rebind", `{"domain":"x.test","group":"clean","reason":"r"}`},
			{"/api/v1/flush", `{"domain":"x.test","binding":"b1"}`},
		} {
			resp, v := call(t, http.MethodPost, base+r.path, "application/json", r.body)
			if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(errText(v), c.field) {
				t.Errorf("%s with %v: %d %v, want 400 naming %q", r.path, c.err, resp.StatusCode, v, c.field)
			}
		}
	}
}
