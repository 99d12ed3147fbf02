package inject

import (
	"bytes"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// sessionConn is byteConn with the replies kept and a client address.
type sessionConn struct {
	byteConn
	out    bytes.Buffer
	remote net.Addr
}

func (s *sessionConn) Write(p []byte) (int, error) { return s.out.Write(p) }
func (s *sessionConn) RemoteAddr() net.Addr        { return s.remote }

var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9]([ -].*)?$`)

// The only temporary replies a session may give without a limit, a
// timeout or a full disk configured into it: too many recipients, and
// local storage trouble. Anything else 4xx would be a transient reply to a
// permanent condition.
var allowedTemporary = map[string]bool{"452 4.5.3": true, "451 4.3.0": true, "452 4.3.1": true}

// FuzzSession runs whole sessions of arbitrary client bytes through the
// real command loop and a real spool, from a relay client and from one
// outside relay_networks. It checks that every reply is a well-formed
// line, that no 4xx answers a permanent condition, that a message is
// stored only from a client allowed to relay, and that nothing stored in
// the envelope (HELO name, sender, recipients) holds a CR, an LF or a NUL
// that could reach a header.
func FuzzSession(f *testing.F) {
	sp := openSpool(f, nil)
	srv, err := New(Options{
		Listen:         []string{"127.0.0.1:0"},
		RelayNetworks:  []netip.Prefix{netip.MustParsePrefix(relayIP + "/32")},
		Hostname:       "mx.test",
		MaxMessageSize: 4 << 10,
		MaxRecipients:  3,
		AuthUsers:      testUsers(f),
		Logger:         zap.NewNop(),
	}, sp, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\nQUIT\r\n"), uint8(7), true)
	f.Fuzz(func(t *testing.T, in []byte, step uint8, relay bool) {
		if step == 0 {
			step = 1
		}
		ip := outsideIP
		if relay {
			ip = relayIP
		}
		sc := &sessionConn{byteConn: byteConn{in: in, step: int(step)}, remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}}
		c := &conn{srv: srv, nc: sc, ip: remoteIP(sc), key: ipKey(remoteIP(sc))}
		c.start.Store(time.Now().UnixNano())
		c.serve()

		out := sc.out.String()
		if !strings.HasPrefix(out, "220 ") || !strings.HasSuffix(out, "\r\n") {
			t.Fatalf("output %q", out)
		}
		for _, l := range strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n") {
			if !replyLine.MatchString(l) || strings.ContainsAny(l, "\r\n\x00") {
				t.Fatalf("malformed reply line %q", l)
			}
			if l[0] == '4' && len(l) >= 9 && !allowedTemporary[l[:9]] {
				t.Fatalf("temporary reply %q", l)
			}
			id, ok := strings.CutPrefix(l, "250 2.0.0 Ok: queued as ")
			if !ok {
				continue
			}
			if !relay && !strings.Contains(strings.ToUpper(string(in)), "AUTH") {
				t.Fatalf("message %s stored for a client outside relay_networks, without AUTH", id)
			}
			m, err := sp.Get(id)
			if err != nil {
				t.Fatalf("queued %s not in the spool: %v", id, err)
			}
			fields := []string{m.Helo, m.Sender}
			for _, r := range m.Recipients {
				fields = append(fields, r.Addr)
			}
			for _, v := range fields {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("stored envelope value %q holds CR, LF or NUL", v)
				}
			}
		}
	})
}
