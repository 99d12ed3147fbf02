package admin

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/scheduler"
)

// TestSummaryEndpoint: GET /api/v1/summary answers the scheduler's
// summary with the API's snake_case keys, every figure where mtactl and
// scripts look for it; HEAD is served, any other method gets 405 with
// Allow; a token is required when tokens are set; and without a summary
// source the path does not exist.
func TestSummaryEndpoint(t *testing.T) {
	t.Parallel()
	used, free := uint64(123456), uint64(9876543210)
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	sum := scheduler.Summary{
		Time: at, Since: at.Add(-time.Hour),
		Totals:         scheduler.Counts{Received: 10, ReceivedRecipients: 25, Delivered: 20, Deferred: 4, Bounced: 2, Expired: 1, Cancelled: 1},
		LastMinute:     scheduler.Counts{Received: 3, ReceivedRecipients: 6, Delivered: 5},
		QueuedMessages: 2, QueuedRecipients: 3, Connections: 4, MaxConnections: 100,
		SpoolBytes: &used, SpoolFreeBytes: &free, Suspensions: 1,
		LastHour: []scheduler.MinuteCounts{{Minute: at, Counts: scheduler.Counts{Received: 3, Delivered: 2}}},
	}
	tokA := strings.Repeat("a", 32)
	toks, err := ParseTokens(strings.NewReader("ops:" + tokA + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	// The server reads the summary on its goroutines; the test swaps it.
	var cur atomic.Pointer[scheduler.Summary]
	cur.Store(&sum)
	base := startServer(t, Options{Summary: func() any { return *cur.Load() }, Tokens: toks})
	do := func(method, token string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest(method, base+"/api/v1/summary", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return doJSON(t, req)
	}

	code, v := do(http.MethodGet, tokA)
	counts := func(r, rr, d, df, b, e, c float64) map[string]any {
		return map[string]any{"received": r, "received_recipients": rr, "delivered": d, "deferred": df,
			"bounced": b, "expired": e, "cancelled": c}
	}
	want := map[string]any{
		"time": "2026-12-01T10:00:00Z", "since": "2026-12-01T09:00:00Z",
		"totals":          counts(10, 25, 20, 4, 2, 1, 1),
		"last_minute":     counts(3, 6, 5, 0, 0, 0, 0),
		"queued_messages": 2.0, "queued_recipients": 3.0, "connections": 4.0, "max_connections": 100.0,
		"spool_bytes": 123456.0, "spool_free_bytes": 9876543210.0, "suspensions": 1.0,
		"last_hour": []any{map[string]any{"minute": "2026-12-01T10:00:00Z", "received": 3.0, "received_recipients": 0.0,
			"delivered": 2.0, "deferred": 0.0, "bounced": 0.0, "expired": 0.0, "cancelled": 0.0}},
	}
	if code != http.StatusOK || !reflect.DeepEqual(v, want) {
		t.Errorf("GET summary: %d\n got %v\nwant %v", code, v, want)
	}

	// A spool that cannot say is null, not 0.
	noSpool := sum
	noSpool.SpoolBytes, noSpool.SpoolFreeBytes = nil, nil
	cur.Store(&noSpool)
	if _, v := do(http.MethodGet, tokA); v["spool_bytes"] != nil || v["spool_free_bytes"] != nil {
		t.Errorf("unknown spool figures: %v %v, want null", v["spool_bytes"], v["spool_free_bytes"])
	}

	req, _ := http.NewRequest(http.MethodHead, base+"/api/v1/summary", nil)
	req.Header.Set("Authorization", "Bearer "+tokA)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD summary: %d", resp.StatusCode)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(m, base+"/api/v1/summary", nil)
		req.Header.Set("Authorization", "Bearer "+tokA)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s summary: %d Allow %q, want 405 GET, HEAD", m, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	if code, v := do(http.MethodGet, ""); code != http.StatusUnauthorized || v["error"] == nil {
		t.Errorf("GET summary without a token: %d %v, want 401 with an error", code, v)
	}
	if code, v := do(http.MethodGet, strings.Repeat("b", 32)); code != http.StatusUnauthorized {
		t.Errorf("GET summary with a bad token: %d %v, want 401", code, v)
	}

	bare := startServer(t, Options{})
	if code, v := getJSON(t, http.MethodGet, bare+"/api/v1/summary"); code != http.StatusNotFound {
		t.Errorf("summary without a source: %d %v, want 404", code, v)
	}
}

// doJSON sends req and decodes its JSON answer.
func doJSON(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, v
}
