package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
