package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// withHTTPInject appends an inject.http listener on a loopback port the
// kernel picks to e's config (the inject: section is the harness's: its
// http key is added under it).
func withHTTPInject(t *testing.T, e *env) {
	t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "inject:\n  smtp:\n", "inject:\n  http:\n    listen: [\"127.0.0.1:0\"]\n  smtp:\n", 1)
	if cfg == string(b) {
		t.Fatal("no inject: section to add http to")
	}
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// httpAddr is the HTTP injection listener's address from the log.
func (d *daemon) httpAddr() string {
	r := d.waitLog("HTTP injection listening", 10*time.Second, func(r record) bool {
		return r.str("msg") == "listening for HTTP injection"
	})
	return r.str("addr")
}

// postMessage posts body to the daemon's HTTP injection API.
func postMessage(addr string, body any) (int, map[string]any, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post("http://"+addr+"/api/v1/messages", "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	var v map[string]any
	_ = json.Unmarshal(data, &v)
	return resp.StatusCode, v, nil
}

// TestHTTPInjectEndToEnd (issue 11): a message posted to the HTTP API is
// answered 202 with its queue ids and delivered to each recipient with its
// own substitutions; a bad field gets 400 naming it.
func TestHTTPInjectEndToEnd(t *testing.T) {
	t.Parallel()
	const sinkIP = "127.0.12.1"
	z, sinks, port := remote(t, []string{sinkIP}, nil)
	addMX(t, z, "http.e2e", sinkIP)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	withHTTPInject(t, e)
	d := start(t, e)
	addr := d.httpAddr()

	code, v, err := postMessage(addr, map[string]any{
		"from": "App <app@src.e2e>",
		"recipients": []any{
			map[string]any{"email": "ann@http.e2e", "substitutions": map[string]string{"name": "Ann"}},
			map[string]any{"email": "bob@http.e2e", "substitutions": map[string]string{"name": "Bob"}},
		},
		"subject":  "Hello {{name}}",
		"text":     "Dear {{name}}, your order shipped.",
		"metadata": map[string]string{"campaign": "c42"},
	})
	if err != nil || code != 202 {
		t.Fatalf("POST: %d %v %v", code, v, err)
	}
	if ids, _ := v["ids"].([]any); len(ids) != 2 || v["accepted"] != float64(2) {
		t.Fatalf("answer %v, want two ids and 2 accepted", v)
	}
	got := sinks[0].WaitMessages(t, 2)
	for _, m := range got {
		name := map[string]string{"ann@http.e2e": "Ann", "bob@http.e2e": "Bob"}[m.To[0]]
		if name == "" || !bytes.Contains(m.Data, []byte("Subject: Hello "+name)) || !bytes.Contains(m.Data, []byte("Dear "+name)) {
			t.Errorf("message to %v:\n%s", m.To, m.Data)
		}
	}
	d.waitLog("received record with metadata", 5*time.Second, func(r record) bool {
		md, _ := r["metadata"].(map[string]any)
		return r.str("event") == "received" && md["campaign"] == "c42"
	})

	code, v, err = postMessage(addr, map[string]any{"from": "app@src.e2e", "recipients": []string{"x@http.e2e"},
		"subject": "bad\r\nBcc: victim@example.com", "text": "x"})
	if err != nil || code != 400 || !strings.HasPrefix(fmt.Sprint(v["error"]), "subject") {
		t.Errorf("header injection: %d %v %v, want 400 naming subject", code, v, err)
	}
}

// TestHTTPInjectKillRace (issue 11): clients post messages while the
// daemon is SIGKILLed; after a restart, every message answered 202 is
// delivered (it was in the spool before the answer), whatever the moment
// of the kill.
func TestHTTPInjectKillRace(t *testing.T) {
	t.Parallel()
	const sinkIP = "127.0.12.2"
	z, sinks, port := remote(t, []string{sinkIP}, nil)
	addMX(t, z, "race.e2e", sinkIP)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	withHTTPInject(t, e)
	d := start(t, e)
	addr := d.httpAddr()

	var mu sync.Mutex
	acked := map[string]bool{} // recipient → answered 202
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ { // bounded; the kill ends it sooner
				select {
				case <-stop:
					return
				default:
				}
				rcpt := fmt.Sprintf("c%d-m%d@race.e2e", c, i)
				code, _, err := postMessage(addr, map[string]any{"from": "app@src.e2e", "recipients": []string{rcpt},
					"subject": "race", "text": "x"})
				if err != nil {
					return // the daemon is gone
				}
				if code == 202 {
					mu.Lock()
					acked[rcpt] = true
					mu.Unlock()
					n.Add(1)
				}
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for n.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	d.kill()
	close(stop)
	wg.Wait()
	mu.Lock()
	want := len(acked)
	mu.Unlock()
	if want == 0 {
		t.Fatal("nothing was acknowledged before the kill")
	}
	start(t, e)
	sinks[0].Wait(t, 60*time.Second, fmt.Sprintf("the %d acknowledged messages", want), func(msgs []loopbacktest.Message, _ int) bool {
		seen := map[string]bool{}
		for _, m := range msgs {
			for _, to := range m.To {
				seen[to] = true
			}
		}
		for r := range acked {
			if !seen[r] {
				return false
			}
		}
		return true
	})
	t.Logf("%d messages answered 202 before the SIGKILL, all delivered after the restart", want)
}
