package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

var (
	tokA = strings.Repeat("a", 31) + "A" // 32 characters
	tokC = strings.Repeat("c", 40)
)

func do(t *testing.T, method, url, auth string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if resp.Header.Get("Content-Type") == "application/json" {
		_ = json.NewDecoder(resp.Body).Decode(&v)
	}
	return resp, v
}

func TestBearerTokens(t *testing.T) {
	t.Parallel()
	toks, err := ParseTokens(strings.NewReader("alice:" + tokA + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Tokens: toks, Listen: "127.0.0.1:0"}
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		_ = s.Shutdown(context.Background())
	})
	base := "http://" + s.Addr().String()

	// With a tokens file, loopback needs a token too, on every path but
	// the probes.
	for _, c := range []struct{ name, auth, challenge, err string }{
		{"missing", "", `Bearer realm="mtad admin"`, "a bearer token is required"},
		{"basic", "Basic " + tokA, `Bearer realm="mtad admin"`, "a bearer token is required"},
		{"empty bearer", "Bearer ", `Bearer realm="mtad admin"`, "a bearer token is required"},
		{"wrong", "Bearer " + tokC, `Bearer realm="mtad admin", error="invalid_token"`, "not one of admin.tokens_file's"},
		{"one char off", "Bearer " + tokA[:31] + "B", `Bearer realm="mtad admin", error="invalid_token"`, "not one of"},
	} {
		for _, path := range []string{"/api/v1/status", "/api/v1/suspensions", "/nope"} {
			resp, v := do(t, http.MethodGet, base+path, c.auth)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != c.challenge {
				t.Errorf("%s %s: %d, WWW-Authenticate %q; want 401 and %q", c.name, path, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), c.challenge)
			}
			if msg, _ := v["error"].(string); !strings.Contains(msg, c.err) {
				t.Errorf("%s %s: error %q, want %q", c.name, path, msg, c.err)
			}
		}
	}
	for _, auth := range []string{"Bearer " + tokA, "bearer " + tokA, "Bearer  " + tokA} {
		if resp, v := do(t, http.MethodGet, base+"/api/v1/status", auth); resp.StatusCode != 200 || v == nil {
			t.Errorf("%q: %d %v, want 200", auth, resp.StatusCode, v)
		}
	}
	// The probes answer without a token: a load balancer's health check
	// cannot send one.
	if resp, v := do(t, http.MethodGet, base+"/healthz", ""); resp.StatusCode != 200 || v["status"] != "ok" {
		t.Errorf("/healthz without a token: %d %v, want 200", resp.StatusCode, v)
	}
	if resp, _ := do(t, http.MethodGet, base+"/readyz", ""); resp.StatusCode == http.StatusUnauthorized {
		t.Errorf("/readyz without a token: 401, want its own answer")
	}

	// A reload swaps the tokens: the new one works, the old is refused.
	toks2, err := ParseTokens(strings.NewReader("bob:" + tokC + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetTokens(toks2); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, http.MethodGet, base+"/api/v1/status", "Bearer "+tokA); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old token after reload: %d, want 401", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodGet, base+"/api/v1/status", "Bearer "+tokC); resp.StatusCode != 200 {
		t.Errorf("new token after reload: %d, want 200", resp.StatusCode)
	}
	// On loopback, tokens may be removed: the API is open again.
	if err := s.SetTokens(nil); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, http.MethodGet, base+"/healthz", ""); resp.StatusCode != 200 {
		t.Errorf("no tokens on loopback: %d, want 200", resp.StatusCode)
	}
}

// TestNonLoopbackNeedsTokens: Start refuses to listen on a non-loopback
// address without tokens, before listening; SetTokens(nil) is refused there.
func TestNonLoopbackNeedsTokens(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"} {
		s := New(Options{Listen: addr})
		err := s.Start()
		if err == nil || !strings.Contains(err.Error(), "admin.listen") || !strings.Contains(err.Error(), "admin.tokens_file") {
			t.Errorf("%s: Start = %v, want a refusal naming admin.listen and admin.tokens_file", addr, err)
		}
		if s.Addr() != nil {
			t.Errorf("%s: listening on %v after the refusal", addr, s.Addr())
			_ = s.Shutdown(context.Background())
		}
		if err := s.SetTokens(nil); err == nil {
			t.Errorf("%s: SetTokens(nil) accepted", addr)
		}
	}
}
