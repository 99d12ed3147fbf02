package admin

// The live status page (issue 11): GET / serves one HTML document whose
// script (static/status.js) reads the admin API every few seconds —
// summary, queues, suspensions — and updates the page in place, with an
// SVG chart of the last hour drawn from the summary's per-minute counts.
//
// The page and its assets are embedded in the binary and hold no data:
// they are served without a token (auth.go) so that a browser, which
// cannot send a bearer token when it navigates, can load them; the script
// asks for the token when the API answers 401 and keeps it in
// sessionStorage only. Nothing is loaded from elsewhere (no CDN, font or
// image from another origin), which the Content-Security-Policy enforces:
// a page that shows remote servers' reply texts must not run anything
// but our own script, even if a text got past its escaping.

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var staticFS embed.FS

// uiPrefix is where the page's assets are served.
const uiPrefix = "/ui/"

// statusCSP allows only our own origin for everything, no plugins, no
// framing (clickjacking), no <base> rewriting, and forms that post
// nowhere (the token form is handled by the script).
const statusCSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"

// staticFile is one embedded asset, read once.
type staticFile struct {
	ctype string
	body  []byte
}

// loadStatic reads the embedded assets; a missing one is a build error
// caught by the tests, so a panic here cannot reach production unseen.
func loadStatic() map[string]staticFile {
	types := map[string]string{
		".html": "text/html; charset=utf-8",
		".css":  "text/css; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".svg":  "image/svg+xml",
	}
	out := map[string]staticFile{}
	err := fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := types[path.Ext(p)]
		if !ok {
			ct = "application/octet-stream"
		}
		out[path.Base(p)] = staticFile{ctype: ct, body: b}
		return nil
	})
	if err != nil {
		panic("admin: embedded status page: " + err.Error())
	}
	return out
}

// statusPage serves GET / (index.html) and GET /ui/NAME (the assets).
func statusPage() (page, assets http.HandlerFunc) {
	files := loadStatic()
	serve := func(w http.ResponseWriter, r *http.Request, name string) {
		f, ok := files[name]
		if !ok || name == "index.html" && r.URL.Path != "/" {
			writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("Content-Security-Policy", statusCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The page changes only with the binary; no-cache makes the
		// browser ask again after an upgrade.
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	}
	page = func(w http.ResponseWriter, r *http.Request) { serve(w, r, "index.html") }
	assets = func(w http.ResponseWriter, r *http.Request) { serve(w, r, r.PathValue("name")) }
	return page, assets
}

// isStatusPage reports whether path is the page or one of its assets,
// which authenticate lets through without a token: they are the same
// embedded files for everyone and carry no data.
// Only a clean path counts: "/ui/../api/v1/summary" must not pass as an
// asset (the mux would redirect it to the API, where the token is asked
// for again, but the exemption should not lean on that).
func isStatusPage(p string) bool {
	return p == "/" || strings.HasPrefix(p, uiPrefix) && path.Clean(p) == p
}
