package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/admin"
)

func TestRun(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"ok"}`))
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no such endpoint: ` + r.URL.Path + `"}`))
		}
	}))
	defer srv.Close()

	cases := []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"--admin", srv.URL, "health"}, 0, `{"status":"ok"}`, ""},
		{[]string{"--admin", srv.URL, "status"}, 1, "", "no such endpoint: /api/v1/status"},
		{[]string{"--admin", srv.URL, "frobnicate"}, 2, "", `unknown command "frobnicate"`},
		// The hint names a command that exists: "mtactl help", not "mtactl help ".
		{[]string{"--admin", srv.URL, "frobnicate"}, 2, "", "run 'mtactl help' for the commands\n"},
		{[]string{"--admin", srv.URL, "queue-summary", "--limit", "x"}, 2, "", "run 'mtactl help queue-summary' for more\n"},
		// A bound of zero or less is refused before any request.
		{[]string{"--admin", srv.URL, "--timeout", "-5s", "health"}, 2, "", "--timeout -5s: want a positive duration"},
		{[]string{"--admin", srv.URL, "--timeout", "0s", "health"}, 2, "", "--timeout 0s: want a positive duration"},
		{[]string{"--admin", srv.URL}, 2, "", "usage"},
		{[]string{"--version"}, 0, "mtactl dev", ""},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		if got := run(c.args, strings.NewReader(""), &out, &errb); got != c.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, got, c.code, errb.String())
		}
		if !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) {
			t.Errorf("%v: stdout %q stderr %q, want %q / %q", c.args, out.String(), errb.String(), c.out, c.err)
		}
	}
}

// TestGlobalFlags: the token from --token or MTAD_ADMIN_TOKEN reaches
// the real admin server's check; help and completion come with cobra.
func TestGlobalFlags(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef-ops"
	toks, err := admin.ParseTokens(strings.NewReader("ops:" + token + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	base := serveAdmin(t, admin.Options{Tokens: toks})
	for _, c := range []struct {
		env  string
		args []string
		code int
		out  string
		err  string
	}{
		{"", []string{"status"}, 1, "", "401"},
		{token, []string{"status"}, 0, "uptime_seconds:  0\n", ""},
		{"", []string{"--token", token, "status", "--json"}, 0, "{\n", ""},
		{"wrong", []string{"--token", token, "status"}, 0, "uptime_seconds:  0\n", ""},
		{"", []string{"help", "bounce"}, 0, "mtactl bounce (--queue-id ID", ""},
		{"", []string{"cancel", "--help"}, 0, "--binding", ""},
		{"", []string{"completion", "bash"}, 0, "bash completion", ""},
		{"", []string{"status", "--timeout", "soon"}, 2, "", "usage: mtactl status"},
	} {
		t.Setenv("MTAD_ADMIN_TOKEN", c.env) // no t.Parallel: the environment is the process's
		code, out, errOut := mtactl(t, base, c.args...)
		if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errOut, c.err) {
			t.Errorf("MTAD_ADMIN_TOKEN=%q %q: exit %d, %q %q; want %d, %q, %q", c.env, c.args, code, out, errOut, c.code, c.out, c.err)
		}
	}
}
