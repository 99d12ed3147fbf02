package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// testQuarantine is the Quarantine the tests plug in: two messages, one
// readable and one not, and a record of each order it is given. The
// spool's and the scheduler's own tests cover what the orders do.
type testQuarantine struct {
	mu     sync.Mutex
	gone   map[string]bool
	orders []string
}

const quarantinedBody = "Subject: held\r\n\r\nhello\r\n"

func (q *testQuarantine) entry(id string) (Quarantined, error) {
	if q.gone[id] {
		return Quarantined{}, fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
	}
	switch id {
	case "01GOOD":
		return Quarantined{QueueID: id, Readable: true, MetaReadable: true, Sender: "s@src.test", Recipients: 1,
			Size: int64(len(quarantinedBody)), Received: time.Unix(1700000000, 0).UTC(),
			Rcpts: []QuarantineRcpt{{Address: "a@x.test", State: "pending"}}}, nil
	case "01BAD":
		return Quarantined{QueueID: id, Reason: "meta record: spool: corrupt record: crc mismatch"}, nil
	}
	return Quarantined{}, fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
}

// List pages the two entries (in id order) as the spool does.
func (q *testQuarantine) List(limit int, after string) (QuarantinedPage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var p QuarantinedPage
	for _, id := range []string{"01BAD", "01GOOD"} {
		e, err := q.entry(id)
		if err != nil || id <= after {
			continue
		}
		if len(p.Items) == limit {
			p.Next = p.Items[limit-1].QueueID
			break
		}
		e.Rcpts = nil
		p.Items = append(p.Items, e)
	}
	return p, nil
}

func (q *testQuarantine) Get(id string) (Quarantined, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.entry(id)
}

func (q *testQuarantine) Body(id string) (io.ReadCloser, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, err := q.entry(id)
	if err != nil {
		return nil, err
	}
	if !e.Readable {
		return nil, fmt.Errorf("%w: %s", ErrUnreadable, e.Reason)
	}
	return io.NopCloser(strings.NewReader(quarantinedBody)), nil
}

func (q *testQuarantine) order(verb, id, by, reason string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if verb == "reinject" && id == "01LIVE" {
		return fmt.Errorf("quarantine %s: %w", id, ErrLive)
	}
	e, err := q.entry(id)
	if err != nil {
		return err
	}
	if verb == "reinject" && !e.Readable {
		return fmt.Errorf("%w: %s", ErrUnreadable, e.Reason)
	}
	if q.gone == nil {
		q.gone = map[string]bool{}
	}
	q.gone[id] = true
	q.orders = append(q.orders, fmt.Sprintf("%s %s by=%s reason=%s", verb, id, by, reason))
	return nil
}

func (q *testQuarantine) Reinject(id, by, reason string) error {
	return q.order("reinject", id, by, reason)
}
func (q *testQuarantine) Delete(id, by, reason string) error {
	return q.order("delete", id, by, reason)
}

func (q *testQuarantine) last() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.orders) == 0 {
		return ""
	}
	return q.orders[len(q.orders)-1]
}

// TestQuarantineEndpoints: list and show what is readable and why not;
// the body of a readable message streams as message/rfc822; re-inject and
// delete pass on who and why and answer 404 once the message is gone; an
// unreadable message is 409 with its reason, an unknown id 404, and each
// bad field 400 naming it.
func TestQuarantineEndpoints(t *testing.T) {
	t.Parallel()
	q := &testQuarantine{}
	base := startServer(t, Options{Quarantine: q})

	code, list, next := getJSONPage(t, base+"/api/v1/quarantine")
	if code != http.StatusOK || len(list) != 2 || next != "" || list[0]["queue_id"] != "01BAD" || list[0]["readable"] != false ||
		!strings.HasPrefix(list[0]["reason"].(string), "meta record: ") || list[1]["sender"] != "s@src.test" || list[1]["rcpts"] != nil {
		t.Fatalf("list: %d %v", code, list)
	}
	// Pages of one: next is the page's last id, "" on the last page.
	if code, list, next := getJSONPage(t, base+"/api/v1/quarantine?limit=1"); code != http.StatusOK || len(list) != 1 || list[0]["queue_id"] != "01BAD" || next != "01BAD" {
		t.Fatalf("first page of one: %d %v next %q", code, list, next)
	}
	if code, list, next := getJSONPage(t, base+"/api/v1/quarantine?limit=1&after=01BAD"); code != http.StatusOK || len(list) != 1 || list[0]["queue_id"] != "01GOOD" || next != "" {
		t.Fatalf("second page of one: %d %v next %q", code, list, next)
	}
	resp, v := call(t, http.MethodGet, base+"/api/v1/quarantine/01GOOD", "", "")
	if rc, _ := v["rcpts"].([]any); resp.StatusCode != http.StatusOK || v["readable"] != true || len(rc) != 1 {
		t.Fatalf("show: %d %v", resp.StatusCode, v)
	}

	r, err := http.Get(base + "/api/v1/quarantine/01GOOD/body")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil || r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != "message/rfc822" || string(b) != quarantinedBody {
		t.Fatalf("body: %d %q %q %v", r.StatusCode, r.Header.Get("Content-Type"), b, err)
	}

	for _, c := range []struct {
		method, path, ctype, body string
		code                      int
		prefix                    string
	}{
		{http.MethodGet, "/api/v1/quarantine/01NONE", "", "", http.StatusNotFound, `id: "01NONE" is not in quarantine`},
		{http.MethodGet, "/api/v1/quarantine/01NONE/body", "", "", http.StatusNotFound, "id: "},
		{http.MethodGet, "/api/v1/quarantine/01BAD/body", "", "", http.StatusConflict, `id: "01BAD" is not readable: unreadable: meta record`},
		{http.MethodPost, "/api/v1/quarantine/01BAD/reinject", "application/json", `{"reason":"try","by":"ivy"}`, http.StatusConflict, `id: "01BAD" is not readable`},
		{http.MethodPost, "/api/v1/quarantine/01LIVE/reinject", "application/json", `{"reason":"try"}`, http.StatusConflict, `id: "01LIVE" is live in the spool`},
		{http.MethodPost, "/api/v1/quarantine/01NONE/reinject", "application/json", `{"reason":"try"}`, http.StatusNotFound, "id: "},
		{http.MethodPost, "/api/v1/quarantine/01GOOD/reinject", "text/plain", `{"reason":"try"}`, http.StatusUnsupportedMediaType, "Content-Type"},
		{http.MethodPost, "/api/v1/quarantine/01GOOD/reinject", "application/json", `{}`, http.StatusBadRequest, "reason: required"},
		{http.MethodPost, "/api/v1/quarantine/01GOOD/reinject", "application/json", `{"reason":"a\tb"}`, http.StatusBadRequest, "reason: control"},
		{http.MethodPost, "/api/v1/quarantine/01GOOD/reinject", "application/json", `{"reason":"r","by":"a\u0001"}`, http.StatusBadRequest, "by: control"},
		{http.MethodPost, "/api/v1/quarantine/01GOOD/reinject", "application/json", `{"reason":"r","force":true}`, http.StatusBadRequest, "force: unknown field"},
		{http.MethodDelete, "/api/v1/quarantine/01GOOD", "", "", http.StatusBadRequest, "reason: required"},
		{http.MethodDelete, "/api/v1/quarantine/01GOOD?reason=x&reason=y", "", "", http.StatusBadRequest, "reason: given 2 times"},
		{http.MethodDelete, "/api/v1/quarantine/01GOOD?reason=x&why=y", "", "", http.StatusBadRequest, "why: unknown parameter"},
		{http.MethodDelete, "/api/v1/quarantine/01NONE?reason=x", "", "", http.StatusNotFound, "id: "},
		{http.MethodGet, "/api/v1/quarantine?domain=x", "", "", http.StatusBadRequest, "domain: unknown parameter"},
		{http.MethodGet, "/api/v1/quarantine?limit=0", "", "", http.StatusBadRequest, "limit: 0 is not between 1 and 1000"},
		{http.MethodGet, "/api/v1/quarantine?limit=1001", "", "", http.StatusBadRequest, "limit: 1001 is not between 1 and 1000"},
		{http.MethodGet, "/api/v1/quarantine?limit=ten", "", "", http.StatusBadRequest, "limit: "},
		{http.MethodGet, "/api/v1/quarantine?limit=1&limit=2", "", "", http.StatusBadRequest, "limit: given 2 times"},
		{http.MethodGet, "/api/v1/quarantine?after=a/b", "", "", http.StatusBadRequest, `after: "a/b" is not a queue id`},
		{http.MethodPost, "/api/v1/quarantine", "application/json", `{}`, http.StatusMethodNotAllowed, "method POST"},
		{http.MethodPut, "/api/v1/quarantine/01GOOD", "application/json", `{}`, http.StatusMethodNotAllowed, "method PUT"},
	} {
		resp, v := call(t, c.method, base+c.path, c.ctype, c.body)
		if resp.StatusCode != c.code || !strings.HasPrefix(errText(v), c.prefix) {
			t.Errorf("%s %s %s: %d %q, want %d starting %q", c.method, c.path, c.body, resp.StatusCode, errText(v), c.code, c.prefix)
		}
	}
	if got := q.last(); got != "" {
		t.Fatalf("a refused request reached the quarantine: %s", got)
	}

	resp, v = call(t, http.MethodPost, base+"/api/v1/quarantine/01GOOD/reinject", "application/json", `{"reason":" disk checked ","by":"ivy"}`)
	if resp.StatusCode != http.StatusOK || v["reinjected"] != "01GOOD" || q.last() != "reinject 01GOOD by=ivy reason=disk checked" {
		t.Fatalf("reinject: %d %v, order %q", resp.StatusCode, v, q.last())
	}
	resp, v = call(t, http.MethodDelete, base+"/api/v1/quarantine/01BAD?reason=unrecoverable", "", "")
	if resp.StatusCode != http.StatusOK || v["deleted"] != "01BAD" || q.last() != "delete 01BAD by=operator reason=unrecoverable" {
		t.Fatalf("delete: %d %v, order %q", resp.StatusCode, v, q.last())
	}
	for _, id := range []string{"01GOOD", "01BAD"} {
		if resp, _ := call(t, http.MethodGet, base+"/api/v1/quarantine/"+id, "", ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s after its order: %d, want 404", id, resp.StatusCode)
		}
	}
	if code, list, _ := getJSONPage(t, base+"/api/v1/quarantine"); code != http.StatusOK || list == nil || len(list) != 0 {
		t.Errorf("empty list: %d %v, want 200 and []", code, list)
	}
}

// getJSONPage GETs url and decodes its {"items":[...],"next":...} answer.
func getJSONPage(t *testing.T, url string) (int, []map[string]any, string) {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var out struct {
		Items []map[string]any `json:"items"`
		Next  *string          `json:"next"`
	}
	if err := json.NewDecoder(r.Body).Decode(&out); err != nil || out.Next == nil {
		t.Fatalf("GET %s: %v, next %v: want a page", url, err, out.Next)
	}
	return r.StatusCode, out.Items, *out.Next
}
