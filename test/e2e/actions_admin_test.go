package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestAdminBounce: against the running daemon, an operator's bounce over
// the admin API ends a domain's deferred mail — one `bounced` record with
// who and why, class 25 — and its sender gets a DSN saying 5.0.0 with
// the reason; the quarantine of a sound spool is empty and an unknown id
// is 404.
func TestAdminBounce(t *testing.T) {
	t.Parallel()
	z, sinks, port := remote(t, []string{"127.0.65.1"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if strings.Contains(to, "@ab.e2e") {
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
			}
			return nil
		}}
	})
	addMX(t, z, "ab.e2e", "127.0.65.1")
	addMX(t, z, "src.e2e", "127.0.65.1")
	// Retries an hour apart: the deferred mail sits in the queue while
	// the bounce is given, never in flight.
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port, retry: "1h", maxRetry: "2h"})
	d := start(t, e)

	msgs := []testMsg{{id: "ab-1@e2e", from: "app@src.e2e", to: []string{"user@ab.e2e"}}}
	if in := inject(d.smtpAddr, 1, msgs, nil); len(in.errs) > 0 || in.ackedCount() != 1 {
		t.Fatalf("injection: %v", in.errs)
	}
	d.waitLog("the deferral", 20*time.Second, func(r record) bool {
		return r.str("event") == "deferred" && r.str("recipient") == "user@ab.e2e"
	})

	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post("http://"+d.admin+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		return resp.StatusCode, v
	}
	if code, v := post("/api/v1/bounce", `{"domain":"ab.e2e","binding":"nosuch","reason":"r"}`); code != http.StatusBadRequest ||
		!strings.HasPrefix(v["error"].(string), "binding: ") {
		t.Errorf("bounce from an unknown binding: %d %v, want 400 naming binding", code, v)
	}
	if code, v := post("/api/v1/bounce", `{"domain":"AB.e2e","reason":"complaint","by":"tester"}`); code != http.StatusOK || v["bounced"] != 1.0 {
		t.Fatalf("bounce: %d %v, want {bounced: 1}", code, v)
	}
	r := d.waitLog("the bounced record", 10*time.Second, func(r record) bool {
		return r.str("event") == "bounced" && r.str("recipient") == "user@ab.e2e"
	})
	if r.str("by") != "tester" || r.str("response") != "complaint" || r.num("bounce_class") != 25 || r.str("enhanced_code") != "5.0.0" {
		t.Errorf("bounced record %v", r)
	}
	var dsn []byte
	sinks[0].Wait(t, 20*time.Second, "the DSN", func(ms []loopbacktest.Message, _ int) bool {
		for _, m := range ms {
			if m.From == "" && len(m.To) == 1 && m.To[0] == "app@src.e2e" {
				dsn = m.Data
				return true
			}
		}
		return false
	})
	for _, want := range []string{"Final-Recipient: rfc822; user@ab.e2e", "Action: failed", "Status: 5.0.0", "complaint"} {
		if !bytes.Contains(dsn, []byte(want)) {
			t.Errorf("DSN lacks %q:\n%s", want, dsn)
		}
	}

	resp, err := http.Get("http://" + d.admin + "/api/v1/quarantine")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []any   `json:"items"`
		Next  *string `json:"next"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || list.Items == nil || len(list.Items) != 0 || list.Next == nil || *list.Next != "" {
		t.Errorf("quarantine list: %d %+v %v, want 200 {\"items\":[],\"next\":\"\"}", resp.StatusCode, list, err)
	}
	if resp, err := http.Get("http://" + d.admin + "/api/v1/quarantine/01NOSUCH"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown quarantine id: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}
}
