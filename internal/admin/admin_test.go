package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startServer(t *testing.T, opts Options) string {
	t.Helper()
	opts.Listen = "127.0.0.1:0"
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr().String()
}

func getJSON(t *testing.T, method, url string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: content type %q", method, url, ct)
	}
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, v
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mtad_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	base := startServer(t, Options{
		Pprof:    true,
		Gatherer: reg,
		Version:  "v-test",
		Status:   func() any { return map[string]int{"active": 7} },
	})

	code, v := getJSON(t, http.MethodGet, base+"/healthz")
	if code != 200 || v["status"] != "ok" {
		t.Errorf("healthz: %d %v", code, v)
	}
	code, v = getJSON(t, http.MethodGet, base+"/api/v1/status")
	if code != 200 || v["version"] != "v-test" || v["state"].(map[string]any)["active"] != 7.0 {
		t.Errorf("status: %d %v", code, v)
	}
	code, v = getJSON(t, http.MethodPost, base+"/api/v1/status")
	if code != http.StatusMethodNotAllowed || !strings.Contains(v["error"].(string), "POST") {
		t.Errorf("POST status: %d %v", code, v)
	}
	code, v = getJSON(t, http.MethodGet, base+"/nope")
	if code != http.StatusNotFound || !strings.Contains(v["error"].(string), "/nope") {
		t.Errorf("404: %d %v", code, v)
	}

	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "mtad_test_total 3") {
		t.Errorf("metrics lack the counter:\n%s", body)
	}

	resp, err = http.Get(base + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Errorf("pprof goroutine profile: %d %.200s", resp.StatusCode, body)
	}
}
