package admin

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

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
	a.orders = append(a.orders, fmt.Sprintf("cancel id=%s domain=%s sender=%s reason=%s by=%s dsn=%t",
		c.QueueID, c.Domain, c.Sender, c.Reason, c.By, c.DSN))
	if c.QueueID == "01GONE" {
		return 0, fmt.Errorf("cancel %s: %w", c.QueueID, ErrNotQueued)
	}
	return len(a.orders), nil
}

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
			"cancel id=01ABC domain= sender= reason=wrong list by=alice dsn=true", "cancelled"},
		{"/api/v1/cancel", `{"domain":"Example.TEST.","reason":" complaint "}`,
			"cancel id= domain=example.test sender= reason=complaint by=operator dsn=false", "cancelled"},
		{"/api/v1/cancel", `{"sender":"news@src.test","reason":"runaway"}`,
			"cancel id= domain= sender=news@src.test reason=runaway by=operator dsn=false", "cancelled"},
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
	resp, v := call(t, http.MethodPost, base+"/api/v1/cancel", "application/json", `{"queue_id":"01GONE","reason":"r"}`)
	if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(errText(v), "queue_id: ") {
		t.Errorf("cancel of an id not queued: %d %v, want 404 naming queue_id", resp.StatusCode, v)
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
	if resp, _ := call(t, http.MethodPost, base+"/api/v1/cancel", "application/json", `{}`); resp.StatusCode != http.StatusNotFound {
		t.Errorf("cancel without Actions: %d, want 404", resp.StatusCode)
	}
}

// FuzzParseCancel: any body is refused naming a field, or gives an order
// with exactly one selector, a domain in canonical form and a reason.
func FuzzParseCancel(f *testing.F) {
	f.Add([]byte(`{"queue_id":"01ABC","reason":"r","by":"alice","dsn":true}`))
	f.Add([]byte(`{"domain":"Example.TEST.","reason":"r"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := parseCancel(body, "tok")
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
		if set != 1 || c.Reason == "" || c.By == "" {
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
