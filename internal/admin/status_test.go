package admin

import (
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestStatusPageServed: / and the page's assets are served, with their
// content types and the strict CSP, without a token even when the API
// needs one (the shell holds no data), while the API itself still asks
// for the token; an unknown asset is a 404, and POST is refused.
func TestStatusPageServed(t *testing.T) {
	t.Parallel()
	toks, err := ParseTokens(strings.NewReader("ops:" + strings.Repeat("a", 32) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	base := startServer(t, Options{Tokens: toks, Summary: func() any { return map[string]int{} }})
	for _, c := range []struct{ path, ctype, contains string }{
		{"/", "text/html; charset=utf-8", `<script src="/ui/status.js"`},
		{"/ui/status.js", "text/javascript; charset=utf-8", "textContent"},
		{"/ui/status.css", "text/css; charset=utf-8", "#chart"},
		{"/ui/icon.svg", "image/svg+xml", "<svg"},
	} {
		resp, err := http.Get(base + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != c.ctype || !strings.Contains(string(body), c.contains) {
			t.Errorf("GET %s: %d %q, want 200 %q containing %q", c.path, resp.StatusCode, resp.Header.Get("Content-Type"), c.ctype, c.contains)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.HasPrefix(csp, "default-src 'self';") || strings.Contains(csp, "unsafe") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q, want default-src 'self' with no unsafe- and no framing", c.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", c.path)
		}
	}
	// The API behind the page still needs the token, also when its path
	// is dressed up as an asset's.
	for _, p := range []string{"/api/v1/summary", "/ui/../api/v1/summary", "/ui/%2e%2e/api/v1/summary"} {
		if code, _ := getJSON(t, http.MethodGet, base+p); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401", p, code)
		}
	}
	for _, p := range []string{"/ui/../api/v1/summary", "/ui/./status.js", "/ui//status.js"} {
		if isStatusPage(p) {
			t.Errorf("isStatusPage(%q) = true, want false for an unclean path", p)
		}
	}
	for _, p := range []string{"/ui/nope.js", "/ui/index.html"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	if code, _ := getJSON(t, http.MethodPost, base+"/"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", code)
	}
}

// TestStatusPageSelfContained: no embedded file names a URL on another
// origin (a CDN, a font, an image): the page must work on a host with no
// way out, and the CSP would block it anyway. The one http:// allowed is
// SVG's namespace name in an xmlns attribute, an identifier that is never
// fetched. Inline scripts and styles are refused as well: the CSP allows
// only the files we serve.
func TestStatusPageSelfContained(t *testing.T) {
	t.Parallel()
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	n := 0
	err := fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), `xmlns="http://www.w3.org/2000/svg"`, "")
		for _, m := range url.FindAllString(s, -1) {
			t.Errorf("%s names %q: nothing may come from another origin", p, m)
		}
		if strings.HasSuffix(p, ".html") {
			if regexp.MustCompile(`<script(\s[^>]*)?>\s*[^<\s]|<style|\sstyle=|\son[a-z]+=`).MatchString(s) {
				t.Errorf("%s has an inline script, style or event handler, which the CSP refuses", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Errorf("%d embedded files, want the page, its script and its style", n)
	}
}
