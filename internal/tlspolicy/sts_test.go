package tlspolicy

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseSTSPolicy(t *testing.T) {
	t.Parallel()
	good := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net.\r\nmax_age: 86400\r\nextension: ignored\r\n"
	p, err := ParseSTSPolicy([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != STSEnforce || p.MaxAge != 24*time.Hour || strings.Join(p.MX, ",") != "mail.example.com,*.example.net" {
		t.Fatalf("parsed %+v", p)
	}
	if q, err := ParseSTSPolicy([]byte(p.String())); err != nil || q.String() != p.String() {
		t.Errorf("String round trip: %v %q", err, q)
	}
	for _, tt := range []struct{ name, in, want string }{
		{"version", "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", `version "STSv2"`},
		{"no version", "mode: enforce\nmx: a.b\nmax_age: 1\n", `version ""`},
		{"mode", "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", `mode "strict"`},
		{"no mode", "version: STSv1\nmx: a.b\nmax_age: 1\n", "no mode"},
		{"age big", "version: STSv1\nmode: testing\nmx: a.b\nmax_age: 31557601\n", "more than 31557600"},
		{"age neg", "version: STSv1\nmode: testing\nmx: a.b\nmax_age: -1\n", "not a number"},
		{"no age", "version: STSv1\nmode: testing\nmx: a.b\n", "no max_age"},
		{"no mx", "version: STSv1\nmode: enforce\nmax_age: 1\n", "without mx"},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n", `mx "a..b"`},
		{"mid wildcard", "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n", `mx "a.*.b"`},
		{"twice", "version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 1\n", `"mode" given twice`},
		{"no colon", "version: STSv1\nmode enforce\n", "no \":\""},
	} {
		if _, err := ParseSTSPolicy([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
	}
	if p, err := ParseSTSPolicy([]byte("version: STSv1\nmode: none\nmax_age: 0\n")); err != nil || p.Mode != STSNone {
		t.Errorf("mode none without mx: %v %+v", err, p)
	}
}

func TestSTSMatches(t *testing.T) {
	t.Parallel()
	p := &STSPolicy{MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com": true, "MAIL.example.com.": true, "other.example.com": false,
		"mx1.example.net": true, "example.net": false, "a.b.example.net": false, ".example.net": false,
	} {
		if got := p.Matches(host); got != want {
			t.Errorf("Matches(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseSTSRecord(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		txts    []string
		id, err string
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", ""},
		{[]string{"v=spf1 -all", "v=STSv1;id=abc"}, "abc", ""},
		{[]string{"v=spf1 -all"}, "", "no MTA-STS TXT record"},
		{nil, "", "no MTA-STS TXT record"},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, "", "2 STSv1 TXT records"},
		{[]string{"v=STSv1;"}, "", "no id"},
		{[]string{"v=STSv1; id=has-dash"}, "", "letters and digits"},
		{[]string{"v=STSv1; id=" + strings.Repeat("a", 33)}, "", "1 to 32"},
		{[]string{"v=STSv10; id=a"}, "", "no MTA-STS TXT record"},
	} {
		id, err := ParseSTSRecord(tt.txts)
		if id != tt.id || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%q: %q, %v; want %q, %q", tt.txts, id, err, tt.id, tt.err)
		}
	}
}

// The parsers read what a domain's DNS and web server say: they must
// never panic, and what they take must render back to itself.
func FuzzParseSTSPolicy(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseSTSPolicy(b)
		if err != nil {
			return
		}
		q, err := ParseSTSPolicy([]byte(p.String()))
		if err != nil || q.String() != p.String() {
			t.Fatalf("%q parsed to %q, which re-parses to %v %v", b, p.String(), q, err)
		}
		for _, m := range p.MX {
			if h := strings.TrimPrefix(m, "*."); h == m && !p.Matches(h) {
				t.Fatalf("pattern %q does not match itself", m)
			}
		}
	})
}

func FuzzParseSTSRecord(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;", "v=spf1 -all")
	f.Fuzz(func(t *testing.T, a, b string) {
		id, err := ParseSTSRecord([]string{a, b})
		if err == nil && (id == "" || len(id) > 32) {
			t.Fatalf("id %q from %q %q", id, a, b)
		}
	})
}
