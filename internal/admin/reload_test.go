package admin

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// testReloader answers with a set result and records who asked and why;
// the daemon's own tests (test/e2e) cover what a reload does.
type testReloader struct {
	mu    sync.Mutex
	calls []string
	res   ReloadResult
}

func (r *testReloader) Reload(who, reason string) ReloadResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, who+"|"+reason)
	return r.res
}

func (r *testReloader) called() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func TestReloadAPI(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ok := &testReloader{res: ReloadResult{OK: true, Applied: []string{"bindings", "log.level"},
		NeedingRestart: []string{"spool: the spool directory is open"}, At: at, Duration: 3 * time.Millisecond}}
	base := startServer(t, Options{Reloader: ok})

	resp, v := call(t, http.MethodPost, base+"/api/v1/reload", "application/json", `{"by":"alice","reason":" new IP "}`)
	if resp.StatusCode != http.StatusOK || v["ok"] != true || v["duration_ns"] != float64(3e6) || v["at"] != "2026-01-02T03:04:05Z" {
		t.Fatalf("reload: %d %v", resp.StatusCode, v)
	}
	if a, _ := v["applied"].([]any); len(a) != 2 || a[1] != "log.level" {
		t.Errorf("applied = %v", v["applied"])
	}
	if n, _ := v["needing_restart"].([]any); len(n) != 1 || !strings.HasPrefix(n[0].(string), "spool: ") {
		t.Errorf("needing_restart = %v", v["needing_restart"])
	}
	// An empty body is a reload by the default operator, without reason.
	if resp, v = call(t, http.MethodPost, base+"/api/v1/reload", "application/json", ``); resp.StatusCode != http.StatusOK {
		t.Fatalf("reload with no body: %d %v", resp.StatusCode, v)
	}
	if got := strings.Join(ok.called(), ","); got != "alice|new IP,operator|" {
		t.Errorf("Reload called with %q", got)
	}

	bad := &testReloader{res: ReloadResult{OK: false, Error: `config: bindings[2].address: binding "x": address 192.0.2.7 is not an address of this host`, At: at}}
	base = startServer(t, Options{Reloader: bad})
	resp, v = call(t, http.MethodPost, base+"/api/v1/reload", "application/json", `{}`)
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(errText(v), "bindings[2].address") {
		t.Fatalf("refused reload: %d %v, want 422 naming bindings[2].address", resp.StatusCode, v)
	}
	if r, _ := v["result"].(map[string]any); r == nil || r["ok"] != false || r["error"] != bad.res.Error {
		t.Errorf("refused reload's result = %v", v["result"])
	}
}

func TestReloadAPIRefused(t *testing.T) {
	t.Parallel()
	r := &testReloader{res: ReloadResult{OK: true}}
	base := startServer(t, Options{Reloader: r})
	for _, c := range []struct {
		method, ctype, body string
		code                int
		field               string
	}{
		{http.MethodGet, "", "", http.StatusMethodNotAllowed, "method GET"},
		{http.MethodPost, "text/plain", `{}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{http.MethodPost, "application/json", `{"by":"a","why":"x"}`, http.StatusBadRequest, ""},
		{http.MethodPost, "application/json", `{"by":"a\nb"}`, http.StatusBadRequest, "by: "},
		{http.MethodPost, "application/json", `{"reason":"` + strings.Repeat("x", maxText+1) + `"}`, http.StatusBadRequest, "reason: "},
		{http.MethodPost, "application/json", `[1]`, http.StatusBadRequest, ""},
	} {
		resp, v := call(t, c.method, base+"/api/v1/reload", c.ctype, c.body)
		if resp.StatusCode != c.code || !strings.HasPrefix(errText(v), c.field) {
			t.Errorf("%s %q: %d %v, want %d starting %q", c.method, c.body, resp.StatusCode, v, c.code, c.field)
		}
	}
	if n := len(r.called()); n != 0 {
		t.Errorf("refused requests reached the reloader %d times", n)
	}
	// Without a Reloader the endpoint does not exist.
	base = startServer(t, Options{})
	if resp, _ := call(t, http.MethodPost, base+"/api/v1/reload", "application/json", `{}`); resp.StatusCode != http.StatusNotFound {
		t.Errorf("reload without a Reloader: %d, want 404", resp.StatusCode)
	}
}
