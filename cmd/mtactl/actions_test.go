package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/mtad/mtad/internal/admin"
)

// recordActions is the admin.Actions behind the test server: it records
// each order the real admin API passed on, and answers with how many
// orders it has had.
type recordActions struct {
	mu     sync.Mutex
	orders []string
}

func (a *recordActions) Cancel(c admin.CancelOrder) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.QueueID == "01GONE" {
		return 0, fmt.Errorf("cancel: %w", admin.ErrNotQueued)
	}
	a.orders = append(a.orders, fmt.Sprintf("cancel id=%s domain=%s sender=%s reason=%s by=%s dsn=%t",
		c.QueueID, c.Domain, c.Sender, c.Reason, c.By, c.DSN))
	return len(a.orders), nil
}

func (a *recordActions) Flush(domain, binding, by string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders = append(a.orders, fmt.Sprintf("flush domain=%s binding=%s by=%s", domain, binding, by))
	return len(a.orders), nil
}

func (a *recordActions) HasBinding(name string) bool { return name == "b1" }

func (a *recordActions) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.orders...)
}

func startActions(t *testing.T) (string, *recordActions) {
	t.Helper()
	a := &recordActions{}
	s := admin.New(admin.Options{Listen: "127.0.0.1:0", Actions: a})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr().String(), a
}

func TestCancelFlushCommands(t *testing.T) {
	t.Parallel()
	base, a := startActions(t)
	for _, c := range []struct {
		args []string
		out  string
	}{
		{[]string{"cancel", "--queue-id", "01ABC", "--reason", "wrong list", "--by", "alice"}, "cancelled 1 recipient\n"},
		{[]string{"cancel", "--domain", "X.test", "--reason", "complaint", "--dsn"}, "cancelled 2 recipients\n"},
		{[]string{"cancel", "--sender", "news@src.test", "--reason", "runaway", "--json"}, `{"cancelled":3}`},
		{[]string{"flush"}, "flushed 4 delayed deliveries: retried now\n"},
		{[]string{"flush", "x.test", "--binding", "b1", "--by", "bob"}, "flushed 5 delayed deliveries: retried now\n"},
	} {
		code, out, errOut := mtactl(t, base, c.args...)
		if code != 0 || compact(out) != strings.TrimSpace(c.out) {
			t.Errorf("mtactl %q: exit %d, %q %q; want 0, %q", c.args, code, out, errOut, c.out)
		}
	}
	// Without --by, the operator is $USER@hostname.
	me := defaultBy()
	want := []string{
		"cancel id=01ABC domain= sender= reason=wrong list by=alice dsn=false",
		"cancel id= domain=x.test sender= reason=complaint by=" + me + " dsn=true",
		"cancel id= domain= sender=news@src.test reason=runaway by=" + me + " dsn=false",
		"flush domain= binding= by=" + me,
		"flush domain=x.test binding=b1 by=bob",
	}
	if got := a.all(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("orders\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCancelFlushRefused(t *testing.T) {
	t.Parallel()
	base, a := startActions(t)
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"cancel", "--reason", "r"}, 2, "usage: mtactl cancel"},
		{[]string{"cancel", "--queue-id", "a", "--domain", "b.test", "--reason", "r"}, 2, "usage: mtactl cancel"},
		{[]string{"cancel", "--domain", "b.test"}, 2, "--reason is required"},
		{[]string{"cancel", "extra", "--domain", "b.test", "--reason", "r"}, 2, "usage: mtactl cancel"},
		{[]string{"cancel", "--domain", "a..test", "--reason", "r"}, 1, "400 Bad Request: domain: "},
		{[]string{"cancel", "--queue-id", "01GONE", "--reason", "r"}, 1, `404 Not Found: queue_id: "01GONE" is not queued`},
		{[]string{"flush", "a.test", "b.test"}, 2, "usage: mtactl flush"},
		{[]string{"flush", "--binding", "nosuch"}, 1, `400 Bad Request: binding: no binding "nosuch"`},
	} {
		code, _, errOut := mtactl(t, base, c.args...)
		if code != c.code || !strings.Contains(errOut, c.err) {
			t.Errorf("mtactl %q: exit %d %q; want %d with %q", c.args, code, errOut, c.code, c.err)
		}
	}
	if got := a.all(); len(got) != 0 {
		t.Errorf("refused commands reached the scheduler: %q", got)
	}
}

// compact is out as compact JSON when it is JSON (--json prints it
// indented), else out trimmed.
func compact(out string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(out)); err != nil {
		return strings.TrimSpace(out)
	}
	return b.String()
}
