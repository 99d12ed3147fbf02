package admin

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"strings"
	"testing"
)

var (
	tokA = strings.Repeat("a", 31) + "A"                   // 32 characters
	tokB = "b-._~+/0123456789abcdefghijklmnopqrstuvwxyz==" // every allowed kind
	tokC = strings.Repeat("c", 40)
)

func TestParseTokens(t *testing.T) {
	t.Parallel()
	toks, err := ParseTokens(strings.NewReader("# ops team\n\nalice:" + tokA + "\n  " + tokB + "  \nci-bot@x.y:" + tokC + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if toks.Len() != 3 {
		t.Fatalf("Len = %d, want 3", toks.Len())
	}
	for tok, want := range map[string]string{tokA: "alice", tokB: "line 4", tokC: "ci-bot@x.y"} {
		if name, ok := toks.Lookup(tok); !ok || name != want {
			t.Errorf("Lookup(%.8s…) = %q, %v; want %q", tok, name, ok, want)
		}
	}
	for _, bad := range []string{"", tokA[:31], tokA + "x", tokA[1:] + "a", "A" + tokA, "alice:" + tokA, strings.ToUpper(tokA)} {
		if name, ok := toks.Lookup(bad); ok {
			t.Errorf("Lookup(%q) = %q, true; want refused", bad, name)
		}
	}

	for _, c := range []struct{ name, in, want string }{
		{"empty", "# nothing\n\n", "no tokens"},
		{"short", "ops:" + tokA[:31], "line 1: token: 31 characters, fewer than 32"},
		{"space inside", "x " + tokA, "line 1: token: character 2 is not one of"},
		{"bad char", "ops:" + tokA + "!", "line 1: token: character 33"},
		{"equals inside", "ops:" + tokA[:16] + "=" + tokA[16:], "line 1: token: character 17"},
		{"only equals", strings.Repeat("=", 40), "line 1: token: only '='"},
		{"empty name", ":" + tokA, "line 1: name: must be 1 to 64"},
		{"long name", strings.Repeat("n", 65) + ":" + tokA, "line 1: name: must be 1 to 64"},
		{"bad name", "a b:" + tokA, `line 1: name: "a b": only letters`},
		{"dup name", "a:" + tokA + "\na:" + tokC, `line 2: name "a" is used twice`},
		{"dup token", "a:" + tokA + "\n# x\nb:" + tokA, "line 3: the same token is on an earlier line"},
		{"long line", strings.Repeat("x", 2000), "a line is longer than 1024 bytes"},
	} {
		_, err := ParseTokens(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
			continue
		}
		// An error must never echo a token back into a log.
		for _, tok := range []string{tokA, tokA[:31], tokC} {
			if strings.Contains(err.Error(), tok) {
				t.Errorf("%s: error %q contains a token", c.name, err)
			}
		}
	}
}

// TestLookupIsConstantTime reads auth.go: Lookup must compare with
// subtle.ConstantTimeCompare, and its loop over the entries must neither
// return nor break early, so that the time taken does not say which entry
// matched or how many bytes of a guess were right. (Timing it would be a
// flaky test; the code's shape is what guarantees it.)
func TestLookupIsConstantTime(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "auth.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lookup *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "Lookup" && fd.Recv != nil {
			lookup = fd
		}
	}
	if lookup == nil {
		t.Fatal("no (*Tokens).Lookup in auth.go")
	}
	var compares, loops int
	ast.Inspect(lookup.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if x, ok := n.X.(*ast.Ident); ok && x.Name == "subtle" && n.Sel.Name == "ConstantTimeCompare" {
				compares++
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				if _, isLit := n.Y.(*ast.BasicLit); !isLit {
					t.Errorf("Lookup compares with %s between non-constants: use subtle.ConstantTimeCompare", n.Op)
				}
			}
		case *ast.RangeStmt, *ast.ForStmt:
			loops++
			ast.Inspect(n, func(m ast.Node) bool {
				switch m := m.(type) {
				case *ast.ReturnStmt:
					t.Error("Lookup returns from inside its loop: the comparison stops early")
				case *ast.BranchStmt:
					if m.Tok == token.BREAK || m.Tok == token.GOTO {
						t.Error("Lookup breaks out of its loop: the comparison stops early")
					}
				}
				return true
			})
		}
		return true
	})
	if compares == 0 || loops != 1 {
		t.Errorf("Lookup: %d calls of subtle.ConstantTimeCompare and %d loops; want ≥1 and 1", compares, loops)
	}
}

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

func FuzzParseTokens(f *testing.F) {
	f.Add("alice:" + tokA + "\n# c\n\n" + tokB + "\n")
	f.Add("x:y\n")
	f.Add(":" + tokA)
	f.Fuzz(func(t *testing.T, in string) {
		toks, err := ParseTokens(strings.NewReader(in))
		if err != nil {
			if toks != nil {
				t.Fatal("tokens with an error")
			}
			return
		}
		if toks.Len() == 0 {
			t.Fatal("no error and no tokens")
		}
		// Every token line parsed is found again under its name.
		for i, line := range strings.Split(in, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' {
				continue
			}
			name, tok, named := strings.Cut(line, ":")
			if !named {
				tok = line
			}
			got, ok := toks.Lookup(tok)
			if !ok || (named && got != name) {
				t.Fatalf("line %d %q: Lookup = %q, %v", i+1, line, got, ok)
			}
		}
	})
}
