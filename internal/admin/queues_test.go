package admin

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseQueueQuery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want QueueQuery
		err  string
	}{
		{"", QueueQuery{Desc: true, Limit: 50}, ""},
		{"by=pair&sort=oldest&order=asc&limit=7&offset=3&domain=*.x.test&provider=gmail&binding=b1",
			QueueQuery{By: "pair", Sort: "oldest", Limit: 7, Offset: 3, Domain: "*.x.test", Provider: "gmail", Binding: "b1"}, ""},
		{"order=up", QueueQuery{}, "order: "},
		{"limit=0", QueueQuery{}, "limit: "},
		{"limit=ten", QueueQuery{}, "limit: "},
		{"offset=-1", QueueQuery{}, "offset: "},
		// IDN: the queues are keyed by A-labels; U-labels are converted,
		// "*" and ASCII labels kept as given.
		{"domain=b%C3%BCcher.test", QueueQuery{Desc: true, Limit: 50, Domain: "xn--bcher-kva.test"}, ""},
		{"domain=*.b%C3%BCcher.test", QueueQuery{Desc: true, Limit: 50, Domain: "*.xn--bcher-kva.test"}, ""},
		{"domain=B%C3%9CCHER.*", QueueQuery{Desc: true, Limit: 50, Domain: "xn--bcher-kva.*"}, ""},
		{"domain=b%C3%BC*.test", QueueQuery{}, "domain: "},
		{"domain=a%E2%80%AEb.test", QueueQuery{}, "domain: "},
	} {
		v, _ := url.ParseQuery(tc.in)
		got, err := parseQueueQuery(v)
		switch {
		case tc.err != "":
			if !errors.Is(err, ErrBadQuery) || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q…", tc.in, err, tc.err)
			}
		case err != nil || got != tc.want:
			t.Errorf("%q: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
	v, _ := url.ParseQuery("sender=a@b.test&limit=3&after=01X")
	if m, err := parseMessageQuery(v); err != nil || m != (MessageQuery{Sender: "a@b.test", Limit: 3, After: "01X"}) {
		t.Errorf("messages: %+v %v", m, err)
	}
}

// FuzzQueueQuery: any query string is read or refused with a ParamError
// naming one of the parameters the API reads itself.
func FuzzQueueQuery(f *testing.F) {
	f.Add("by=domain&sort=active&order=desc&limit=50")
	f.Add("limit=99999999999999999999&offset=1")
	f.Add("domain=%5B&order=ASC")
	f.Add("domain=*.b%C3%BCcher.test")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		for _, parse := range []func(url.Values) error{
			func(v url.Values) error { q, err := parseQueueQuery(v); checkQQ(t, q, err); return err },
			func(v url.Values) error { _, err := parseMessageQuery(v); return err },
		} {
			err := parse(v)
			var pe *ParamError
			if err != nil && (!errors.As(err, &pe) || (pe.Param != "order" && pe.Param != "limit" && pe.Param != "offset" && pe.Param != "domain")) {
				t.Fatalf("%q: %v", raw, err)
			}
		}
	})
}

func checkQQ(t *testing.T, q QueueQuery, err error) {
	if err == nil && (q.Limit < 1 || q.Offset < 0) {
		t.Fatalf("accepted %+v", q)
	}
	for i := 0; err == nil && i < len(q.Domain); i++ {
		if q.Domain[i] >= 0x80 {
			t.Fatalf("domain %q passed on with non-ASCII", q.Domain)
		}
	}
}
