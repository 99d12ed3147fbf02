package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/spool"
)

// testQueues is cmd/mtad's adminQueues, restated here (cmd/mtad is a
// main package): the admin API's Queues over this scheduler.
type testQueues struct{ s *Scheduler }

func (a testQueues) QueueView(q admin.QueueQuery) (any, error) {
	p, err := a.s.QueueView(ViewQuery{By: q.By, Sort: q.Sort, Desc: q.Desc, Limit: q.Limit, Offset: q.Offset,
		Domain: q.Domain, Provider: q.Provider, Binding: q.Binding})
	return p, testQueuesErr(err)
}

func (a testQueues) Messages(q admin.MessageQuery) (any, error) {
	p, err := a.s.Messages(MessageQuery{Domain: q.Domain, Binding: q.Binding, Sender: q.Sender, Limit: q.Limit, After: q.After})
	return p, testQueuesErr(err)
}

func (a testQueues) Message(id string) (any, error) {
	m, err := a.s.Message(id)
	return m, testQueuesErr(err)
}

func (a testQueues) MessageBody(id string) (io.ReadCloser, int64, error) {
	br, err := a.s.MessageBody(id)
	if err != nil {
		return nil, 0, testQueuesErr(err)
	}
	return br, br.Size(), nil
}

func testQueuesErr(err error) error {
	var qe *QueryError
	switch {
	case errors.As(err, &qe):
		return &admin.ParamError{Param: qe.Param, Msg: qe.Msg}
	case errors.Is(err, ErrNotQueued):
		return fmt.Errorf("%w: %w", admin.ErrNotQueued, err)
	}
	return err
}

func httpGet(t *testing.T, url string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// TestAdminQueuesAndMessages: the admin API over real HTTP, in front of a
// real scheduler and spool holding deferred mail and one 1.5 MB message.
func TestAdminQueuesAndMessages(t *testing.T) {
	t.Parallel()
	h, msgs, _ := viewFixture(t)
	// A 1.5 MB message to x.test (deferred like the others).
	var big bytes.Buffer
	big.WriteString("From: big@src.test\r\nSubject: big\r\n\r\n")
	for i := 0; big.Len() < 1536<<10; i++ {
		fmt.Fprintf(&big, "line %07d of a long body, to be streamed back byte for byte\r\n", i)
	}
	bm := &spool.Message{Sender: "big@src.test", Received: h.clock.Now(), Recipients: []spool.Recipient{{Addr: "e@x.test"}}}
	if err := h.sp.Put(bm, big.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Submit(bm); err != nil {
		t.Fatal(err)
	}
	h.deferredAll(1)

	srv := admin.New(admin.Options{Listen: "127.0.0.1:0", Queues: testQueues{h.s}})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	base := "http://" + srv.Addr().String()

	code, _, b := httpGet(t, base+"/api/v1/queues?sort=delayed&limit=2")
	var qp struct {
		By     string           `json:"by"`
		Total  int              `json:"total"`
		Offset int              `json:"offset"`
		Limit  int              `json:"limit"`
		Items  []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(b, &qp); code != 200 || err != nil {
		t.Fatalf("queues: %d %s %v", code, b, err)
	}
	if qp.By != "domain" || qp.Total != 3 || qp.Limit != 2 || len(qp.Items) != 2 || qp.Items[0]["domain"] != "x.test" || qp.Items[0]["delayed"] != 3.0 {
		t.Fatalf("queues page %s", b)
	}
	for _, k := range []string{"domain", "provider", "active", "delayed", "connections", "oldest_seconds", "deferred",
		"bounced", "bounce_classes", "last_reply", "suspension", "throttle"} {
		if _, ok := qp.Items[0][k]; !ok {
			t.Errorf("queues item has no %q: %v", k, qp.Items[0])
		}
	}
	if lr, _ := qp.Items[0]["last_reply"].(map[string]any); lr["code"] != 451.0 || lr["enhanced"] != "4.3.0" {
		t.Errorf("last_reply %v", qp.Items[0]["last_reply"])
	}

	for _, tc := range []struct{ query, prefix string }{
		{"sort=size", "sort: "}, {"order=sideways", "order: "}, {"limit=x", "limit: "}, {"limit=5000", "limit: "},
		{"by=mx", "by: "}, {"domain=%5B", "domain: "}, {"binding=nope", "binding: "}, {"offset=-2", "offset: "},
	} {
		code, _, b := httpGet(t, base+"/api/v1/queues?"+tc.query)
		var e struct{ Error string }
		if err := json.Unmarshal(b, &e); code != 400 || err != nil || !strings.HasPrefix(e.Error, tc.prefix) {
			t.Errorf("queues?%s: %d %s, want 400 %q…", tc.query, code, b, tc.prefix)
		}
	}

	code, _, b = httpGet(t, base+"/api/v1/messages?domain=x.test&limit=2")
	var mp struct {
		Items []map[string]any `json:"items"`
		Next  string           `json:"next"`
	}
	if err := json.Unmarshal(b, &mp); code != 200 || err != nil || len(mp.Items) != 2 || mp.Next != msgs[1].ID ||
		mp.Items[0]["queue_id"] != msgs[0].ID || mp.Items[0]["state"] != "delayed" {
		t.Fatalf("messages: %d %s", code, b)
	}
	code, _, b = httpGet(t, base+"/api/v1/messages?domain=x.test&after="+mp.Next)
	if err := json.Unmarshal(b, &mp); code != 200 || err != nil || len(mp.Items) != 1 || mp.Items[0]["queue_id"] != bm.ID || mp.Next != "" {
		t.Fatalf("messages page 2: %d %s", code, b)
	}
	for _, q := range []string{"binding=b0", "", "domain=x.test&sender=s@src.test", "domain=x.test&limit=-1"} {
		if code, _, b := httpGet(t, base+"/api/v1/messages?"+q); code != 400 || !bytes.Contains(b, []byte(`"error"`)) {
			t.Errorf("messages?%s: %d %s, want 400", q, code, b)
		}
	}

	code, _, b = httpGet(t, base+"/api/v1/messages/"+msgs[0].ID)
	var md map[string]any
	if err := json.Unmarshal(b, &md); code != 200 || err != nil || md["sender"] != "s@src.test" || md["held"] != true ||
		!strings.Contains(md["headers"].(string), "Subject: test for a@x.test") {
		t.Fatalf("message: %d %s", code, b)
	}
	if code, _, b := httpGet(t, base+"/api/v1/messages/01NOSUCHMESSAGE"); code != 404 || !bytes.Contains(b, []byte(`"id: \"01NOSUCHMESSAGE\" is not spooled"`)) {
		t.Errorf("unknown message: %d %s", code, b)
	}
	if code, _, b := httpGet(t, base+"/api/v1/messages/01NOSUCHMESSAGE/body"); code != 404 {
		t.Errorf("unknown body: %d %s", code, b)
	}

	code, hdr, b := httpGet(t, base+"/api/v1/messages/"+bm.ID+"/body")
	if code != 200 || hdr.Get("Content-Type") != "message/rfc822" || hdr.Get("Content-Length") != fmt.Sprint(big.Len()) {
		t.Fatalf("body: %d %v", code, hdr)
	}
	if !bytes.Equal(b, big.Bytes()) {
		t.Fatalf("body streamed back differs: %d bytes, want %d", len(b), big.Len())
	}
}
