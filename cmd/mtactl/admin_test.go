package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestAdminBase(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in, want, err string
	}{
		{"127.0.0.1:8025", "http://127.0.0.1:8025", ""},
		{"localhost:8025", "http://localhost:8025", ""},
		{"[::1]:8025", "http://[::1]:8025", ""},
		{"http://127.0.0.1:8025", "http://127.0.0.1:8025", ""},
		{"http://127.0.0.1:8025/", "http://127.0.0.1:8025", ""},
		{"https://mtad.example.com/admin/", "https://mtad.example.com/admin", ""},
		{"http://[::1]:8025", "http://[::1]:8025", ""},
		{"", "", "empty"},
		{"127.0.0.1", "", "want host:port"},
		{"localhost", "", "want host:port"},
		{":8025", "", "no host"},
		{"127.0.0.1:", "", `port ""`},
		{"127.0.0.1:http", "", `port "http"`},
		{"127.0.0.1:0", "", `port "0"`},
		{"127.0.0.1:65536", "", `port "65536"`},
		{"127.0.0.1:+80", "", `port "+80"`},
		{"::1:8025", "", "want host:port"},
		{"ftp://127.0.0.1:8025", "", `scheme "ftp"`},
		{"http://:8025", "", "no host"},
		{"http://127.0.0.1:x", "", "not a URL"},
		{"http://127.0.0.1:", "", `port ""`},
		{"http://127.0.0.1:99999", "", `port "99999"`},
		{"http://u:p@127.0.0.1:8025", "", "user info"},
		{"http://127.0.0.1:8025/?x=1", "", "query"},
		{"http://127.0.0.1:8025#f", "", "fragment"},
	} {
		got, err := adminBase(c.in)
		switch {
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("adminBase(%q) = %q, %v; want %q", c.in, got, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("adminBase(%q) = %q, %v; want an error with %q", c.in, got, err, c.err)
		}
	}
}

// TestAdminFlag: both spellings reach the daemon, and a bad value stops
// mtactl with exit 2 naming where the value came from.
func TestAdminFlag(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"status":"ok","path":"` + r.URL.Path + `"}`))
	}))
	defer srv.Close()
	hostPort := strings.TrimPrefix(srv.URL, "http://")

	for _, c := range []struct {
		env      string
		args     []string
		code     int
		out, err string
	}{
		{"", []string{"--admin", hostPort, "health"}, 0, `"path":"/healthz"`, ""},
		{"", []string{"--admin", srv.URL + "/", "health"}, 0, `"path":"/healthz"`, ""},
		{"", []string{"--admin=" + hostPort, "status"}, 0, "path:    /api/v1/status\n", ""},
		{hostPort, []string{"health"}, 0, `"path":"/healthz"`, ""},
		{"nonsense", []string{"--admin", hostPort, "health"}, 0, `"path":"/healthz"`, ""},
		{"", []string{"--admin", "localhost", "health"}, 2, "", `--admin: "localhost": want host:port`},
		{"", []string{"--admin", "ftp://x:1", "health"}, 2, "", `--admin: "ftp://x:1": scheme "ftp"`},
		{"localhost", []string{"health"}, 2, "", `MTAD_ADMIN: "localhost": want host:port`},
	} {
		t.Setenv("MTAD_ADMIN", c.env) // no t.Parallel: the environment is the process's
		var out, errb bytes.Buffer
		if got := run(c.args, strings.NewReader(""), &out, &errb); got != c.code {
			t.Errorf("MTAD_ADMIN=%q %v: exit %d, want %d (stderr %q)", c.env, c.args, got, c.code, errb.String())
		}
		if !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) {
			t.Errorf("MTAD_ADMIN=%q %v: stdout %q stderr %q, want %q / %q", c.env, c.args, out.String(), errb.String(), c.out, c.err)
		}
	}
}

// FuzzAdminBase: whatever is typed, adminBase does not panic, and what it
// accepts is an http(s) URL with a host that requests can be built on.
func FuzzAdminBase(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8025", "[::1]:8025", "http://127.0.0.1:8025/", "https://h/p", ":1", "http://[::1", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		base, err := adminBase(v)
		if err != nil {
			if !strings.Contains(err.Error(), "want") && !strings.Contains(err.Error(), "no host") &&
				!strings.Contains(err.Error(), "port") && !strings.Contains(err.Error(), "not a") &&
				!strings.Contains(err.Error(), "user info") && !strings.Contains(err.Error(), "empty") {
				t.Fatalf("adminBase(%q): error %q says nothing of what was wanted", v, err)
			}
			return
		}
		u, err := url.Parse(base + "/healthz")
		if err != nil {
			t.Fatalf("adminBase(%q) = %q: not a URL: %v", v, base, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || strings.HasSuffix(base, "/") {
			t.Fatalf("adminBase(%q) = %q: want http(s)://host[:port][/prefix] without a trailing /", v, base)
		}
		if _, err := http.NewRequest(http.MethodGet, base+"/healthz", nil); err != nil {
			t.Fatalf("adminBase(%q) = %q: no request on it: %v", v, base, err)
		}
	})
}
