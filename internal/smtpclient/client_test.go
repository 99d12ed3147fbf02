package smtpclient

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

func TestEHLONameBeforeAndAfterSTARTTLS(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, func(s *smtp.Server) { s.TLSConfig = serverTLSConfig() })
	c := newClient(t, addr, Options{})
	if !c.TLS() {
		t.Fatal("TLS() = false, want STARTTLS in effect")
	}
	if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
		t.Fatalf("TLSConnectionState = %v, %v", st.HandshakeComplete, ok)
	}
	if _, ok := c.Extensions()["STARTTLS"]; ok {
		t.Error("extensions after STARTTLS still list STARTTLS: the second EHLO's reply was not used")
	}
	if !strings.Contains(c.Greeting(), "mx.test") {
		t.Errorf("Greeting() = %q", c.Greeting())
	}
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Bytes([]byte("Subject: x\r\n\r\nhi\r\n")))
	if err != nil || res.Data != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	helos, _, msgs := be.snapshot()
	want := []heloRec{{localName, false}, {localName, true}}
	if !reflect.DeepEqual(helos, want) {
		t.Errorf("server saw EHLO %+v, want %+v", helos, want)
	}
	if len(msgs) != 1 || !msgs[0].tls {
		t.Errorf("messages %+v, want one received over TLS", msgs)
	}
}

func TestSTARTTLSNotUsed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		serverTLS  bool
		disableTLS bool
	}{
		{"disabled", true, true},
		{"not offered", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := &backend{}
			addr := startServer(t, be, func(s *smtp.Server) {
				if tc.serverTLS {
					s.TLSConfig = serverTLSConfig()
				}
			})
			c := newClient(t, addr, Options{DisableTLS: tc.disableTLS})
			if c.TLS() {
				t.Fatal("TLS() = true")
			}
			if _, offered := c.Extensions()["STARTTLS"]; offered != tc.serverTLS {
				t.Errorf("STARTTLS offered = %v, want %v", offered, tc.serverTLS)
			}
			if res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Bytes([]byte("hi\r\n"))); err != nil || res.Data != nil {
				t.Fatalf("Send = %+v, %v", res, err)
			}
			helos, _, msgs := be.snapshot()
			if want := []heloRec{{localName, false}}; !reflect.DeepEqual(helos, want) {
				t.Errorf("server saw EHLO %+v, want %+v", helos, want)
			}
			if len(msgs) != 1 || msgs[0].tls {
				t.Errorf("messages %+v, want one in clear text", msgs)
			}
		})
	}
}

// A handshake that fails (here: no common TLS version) closes the
// connection with a temporary PhaseTLS error; the host goes into the
// TLSMemory and the redial in clear text delivers.
func TestTLSHandshakeFailureThenClearText(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, func(s *smtp.Server) {
		cfg := serverTLSConfig()
		cfg.MinVersion = tls.VersionTLS13
		s.TLSConfig = cfg
	})
	mem := NewTLSMemory(time.Hour, 100, nil)
	opts := Options{
		LocalName:  localName,
		ServerName: "mx.test",
		TLSConfig:  &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true},
		DisableTLS: mem.Skip("mx.test"),
	}
	conn := dial(t, addr)
	_, err := New(conn, opts)
	e := outcome.As(err)
	if e == nil || e.Phase != outcome.PhaseTLS || !e.Temporary {
		t.Fatalf("New = %v, want a temporary %q error", err, outcome.PhaseTLS)
	}
	if _, werr := conn.Write([]byte("NOOP\r\n")); !errors.Is(werr, net.ErrClosed) {
		t.Errorf("write after TLS failure = %v, want the connection closed", werr)
	}

	mem.Failed("MX.test.")
	opts.DisableTLS = mem.Skip("mx.test")
	if !opts.DisableTLS {
		t.Fatal("TLSMemory does not skip the failed host")
	}
	c := newClient(t, addr, opts)
	if c.TLS() {
		t.Fatal("TLS() = true after DisableTLS")
	}
	if res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Bytes([]byte("hi\r\n"))); err != nil || res.Data != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if _, _, msgs := be.snapshot(); len(msgs) != 1 {
		t.Errorf("server got %d messages, want 1", len(msgs))
	}
}

func TestPerRecipientResults(t *testing.T) {
	t.Parallel()
	forBothTransfers(t, func(t *testing.T, chunked bool) {
		be := &backend{rejectRcpt: map[string]*smtp.SMTPError{
			"bad@dst.test":   {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
			"later@dst.test": {Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try later"},
		}}
		addr := startServer(t, be, nil)
		c := newClient(t, addr, Options{DisableChunking: !chunked})
		to := []string{"ok1@dst.test", "bad@dst.test", "later@dst.test", "ok2@dst.test"}
		res, err := c.Send(Envelope{From: "a@src.test", To: to}, Bytes([]byte("hello\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		if res.Data != nil {
			t.Fatalf("Data = %v, want accepted", res.Data)
		}
		if res.DotReply == "" {
			t.Error("DotReply empty after an accepted message")
		}
		if res.Rcpt[0] != nil || res.Rcpt[3] != nil {
			t.Errorf("accepted recipients got errors: %v, %v", res.Rcpt[0], res.Rcpt[3])
		}
		wantRcpt := []struct {
			i    int
			code int
			enh  smtp.EnhancedCode
			temp bool
			msg  string
		}{
			{1, 550, smtp.EnhancedCode{5, 1, 1}, false, "no such user"},
			{2, 450, smtp.EnhancedCode{4, 2, 0}, true, "try later"},
		}
		for _, w := range wantRcpt {
			e := res.Rcpt[w.i]
			if e == nil || e.Phase != outcome.PhaseRcpt || e.Code != w.code || e.Enhanced != w.enh || e.Temporary != w.temp || e.Message != w.msg {
				t.Errorf("Rcpt[%d] = %+v, want %d %v temp=%v %q", w.i, e, w.code, w.enh, w.temp, w.msg)
			}
		}
		_, _, msgs := be.snapshot()
		if len(msgs) != 1 || !reflect.DeepEqual(msgs[0].rcpts, []string{"ok1@dst.test", "ok2@dst.test"}) {
			t.Errorf("server got %+v, want one message for ok1 and ok2", msgs)
		}
	})
}

func TestMailRejectedThenReuse(t *testing.T) {
	t.Parallel()
	forBothTransfers(t, func(t *testing.T, chunked bool) {
		be := &backend{rejectMail: map[string]*smtp.SMTPError{
			"spam@src.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "go away"},
		}}
		addr := startServer(t, be, nil)
		c := newClient(t, addr, Options{DisableChunking: !chunked})
		res, err := c.Send(Envelope{From: "spam@src.test", To: []string{"x@dst.test", "y@dst.test"}}, Bytes([]byte("hi\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range append(res.Rcpt, res.Data) {
			if e == nil || e.Phase != outcome.PhaseMail || e.Code != 550 || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 7, 1}) {
				t.Errorf("result %d = %+v, want the MAIL rejection", i, e)
			}
		}
		res, err = c.Send(Envelope{From: "good@src.test", To: []string{"x@dst.test"}}, Bytes([]byte("hi\r\n")))
		if err != nil || res.Data != nil || res.Rcpt[0] != nil {
			t.Fatalf("second Send = %+v, %v", res, err)
		}
		if _, _, msgs := be.snapshot(); len(msgs) != 1 || msgs[0].from != "good@src.test" {
			t.Errorf("server got %+v, want only good@'s message", msgs)
		}
	})
}

func TestDataRejectedAfterDot(t *testing.T) {
	t.Parallel()
	forBothTransfers(t, func(t *testing.T, chunked bool) {
		be := &backend{dataErr: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}}
		addr := startServer(t, be, nil)
		c := newClient(t, addr, Options{DisableChunking: !chunked})
		res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test"}}, Bytes([]byte("bad\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		if res.Rcpt[0] != nil {
			t.Errorf("Rcpt[0] = %v, want accepted at RCPT", res.Rcpt[0])
		}
		if e := res.Data; e == nil || e.Phase != outcome.PhaseDot || e.Code != 554 || e.Temporary || e.Message != "content rejected" {
			t.Errorf("Data = %+v, want the 554 after the dot", e)
		}
		if res.DotReply != "" {
			t.Errorf("DotReply = %q on a rejection", res.DotReply)
		}
	})
}

// When every RCPT fails, the pipelined DATA (or BDAT) is refused, no body is
// taken (BDAT sent it already; the server discards it),
// and the connection is still good for the next transaction (the RSET goes
// out with it).
func TestNoValidRecipients(t *testing.T) {
	t.Parallel()
	forBothTransfers(t, func(t *testing.T, chunked bool) {
		be := &backend{rejectRcpt: map[string]*smtp.SMTPError{
			"gone@dst.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "gone"},
			"full@dst.test": {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "full"},
		}}
		addr := startServer(t, be, nil)
		c := newClient(t, addr, Options{DisableChunking: !chunked})
		for _, tc := range []struct {
			to   []string
			temp bool
		}{
			{[]string{"gone@dst.test"}, false},
			{[]string{"gone@dst.test", "full@dst.test"}, true},
		} {
			res, err := c.Send(Envelope{From: "a@src.test", To: tc.to}, Bytes([]byte("never sent\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			if res.Data == nil || res.Data.Temporary != tc.temp {
				t.Errorf("to %v: Data = %+v, want no-valid-recipients with temporary=%v", tc.to, res.Data, tc.temp)
			}
			for i, e := range res.Rcpt {
				if e == nil || e.Phase != outcome.PhaseRcpt {
					t.Errorf("to %v: Rcpt[%d] = %v", tc.to, i, e)
				}
			}
		}
		res, err := c.Send(Envelope{From: "a@src.test", To: []string{"ok@dst.test"}}, Bytes([]byte("sent\r\n")))
		if err != nil || res.Data != nil {
			t.Fatalf("Send after failures = %+v, %v", res, err)
		}
		if _, _, msgs := be.snapshot(); len(msgs) != 1 || msgs[0].data != "sent\r\n" {
			t.Errorf("server got %+v, want only the last message", msgs)
		}
	})
}

func TestDotStuffingRoundTrip(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, nil)
	c := newClient(t, addr, Options{})
	body := "Subject: dots\r\n\r\n.hidden\r\n..two\r\n.\r\nmiddle . dot\r\n. space\r\nlast line no CRLF"
	if res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Bytes([]byte(body))); err != nil || res.Data != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	_, _, msgs := be.snapshot()
	if len(msgs) != 1 || msgs[0].data != body+"\r\n" {
		t.Fatalf("server got %+v, want data %q", msgs, body+"\r\n")
	}
}

func TestMailParameters(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, func(s *smtp.Server) { s.EnableSMTPUTF8 = true })
	c := newClient(t, addr, Options{})
	body := []byte("Subject: caf\xc3\xa9\r\n\r\nt\xc3\xa9st\r\n")
	env := Envelope{From: "ren\xc3\xa9@src.test", To: []string{"b@dst.test"}, Size: int64(len(body)), UTF8: true, EightBit: true}
	if res, err := c.Send(env, Bytes(body)); err != nil || res.Data != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	_, _, msgs := be.snapshot()
	if len(msgs) != 1 {
		t.Fatalf("server got %d messages", len(msgs))
	}
	o := msgs[0].opts
	if o.Size != int64(len(body)) || o.Body != smtp.Body8BitMIME || !o.UTF8 {
		t.Errorf("MAIL options %+v, want SIZE=%d BODY=8BITMIME SMTPUTF8", o, len(body))
	}
}

// Limits the server advertises are enforced before anything is sent.
func TestAdvertisedLimits(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, func(s *smtp.Server) { s.MaxMessageBytes = 100 })
	c := newClient(t, addr, Options{})
	for _, tc := range []struct {
		name string
		env  Envelope
		enh  smtp.EnhancedCode
	}{
		{"utf8 sender, not offered", Envelope{From: "ren\xc3\xa9@src.test", To: []string{"b@dst.test", "c@dst.test"}, UTF8: true}, smtp.EnhancedCode{5, 6, 7}},
		{"over SIZE", Envelope{From: "a@src.test", To: []string{"b@dst.test"}, Size: 101}, smtp.EnhancedCode{5, 3, 4}},
		{"bad sender", Envelope{From: "a@src.test>\r\nRSET", To: []string{"b@dst.test"}}, smtp.EnhancedCode{5, 1, 7}},
	} {
		res, err := c.Send(tc.env, Bytes([]byte("x\r\n")))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for i, e := range append(res.Rcpt, res.Data) {
			if e == nil || e.Temporary || e.Enhanced != tc.enh {
				t.Errorf("%s: result %d = %+v, want permanent %v", tc.name, i, e, tc.enh)
			}
		}
	}
	if _, mails, _ := be.snapshot(); len(mails) != 0 {
		t.Errorf("server saw MAIL %v, want none", mails)
	}
}

// An address that would inject a command never reaches the wire; the
// other recipients are delivered.
func TestInvalidRecipientNotSent(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, nil)
	c := newClient(t, addr, Options{})
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"ok@dst.test", "x@dst.test>\r\nRCPT TO:<evil@dst.test", ""}}, Bytes([]byte("hi\r\n")))
	if err != nil || res.Data != nil || res.Rcpt[0] != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	for _, i := range []int{1, 2} {
		if e := res.Rcpt[i]; e == nil || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 1, 3}) {
			t.Errorf("Rcpt[%d] = %+v, want permanent 5.1.3", i, e)
		}
	}
	if _, _, msgs := be.snapshot(); len(msgs) != 1 || !reflect.DeepEqual(msgs[0].rcpts, []string{"ok@dst.test"}) {
		t.Errorf("server got %+v", msgs)
	}
}

func TestReuseOneConnection(t *testing.T) {
	t.Parallel()
	be := &backend{dataErr: nil}
	addr := startServer(t, be, nil)
	c := newClient(t, addr, Options{})
	for i := range 3 {
		from := "s" + string(rune('0'+i)) + "@src.test"
		res, err := c.Send(Envelope{From: from, To: []string{"b@dst.test"}}, Bytes([]byte("msg\r\n")))
		if err != nil || res.Data != nil {
			t.Fatalf("Send %d = %+v, %v", i, res, err)
		}
		if err := c.Reset(); err != nil {
			t.Fatalf("Reset %d: %v", i, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	if _, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Body{}); !outcome.IsTemporary(err) {
		t.Errorf("Send after Quit = %v, want a temporary error", err)
	}
	helos, _, msgs := be.snapshot()
	if len(helos) != 1 || len(msgs) != 3 {
		t.Errorf("server saw %d sessions and %d messages, want 1 and 3", len(helos), len(msgs))
	}
}

func TestLocalNameRequired(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer server.Close()
	if _, err := New(client, Options{}); err == nil {
		t.Fatal("New without LocalName succeeded")
	}
	if _, err := client.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("conn not closed after New failed: %v", err)
	}
}

// TestTransferChoice: with PIPELINING and CHUNKING offered, a clean body
// goes out as one BDAT LAST chunk in the same write as MAIL and RCPT; DATA
// is used when chunking is disabled, when the body has a bare LF (BDAT
// would send it unrepaired), and when it is over maxChunkedBody. The server
// gets the same bytes either way.
func TestTransferChoice(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n", maxChunkedBody/64+1)
	for _, tc := range []struct {
		name        string
		opts        Options
		body, want  string
		wantChunked bool
	}{
		{"clean body", Options{}, "Subject: x\r\n\r\n.dot line\r\nend\r\n", "Subject: x\r\n\r\n.dot line\r\nend\r\n", true},
		{"chunking disabled", Options{DisableChunking: true}, "a\r\n.b\r\n", "a\r\n.b\r\n", false},
		{"bare LF", Options{}, "a\nb\r\n", "a\r\nb\r\n", false},
		{"no final CRLF", Options{}, "a\r\nb", "a\r\nb\r\n", false},
		{"over the BDAT limit", Options{}, big, big, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := &backend{}
			dlog := &dialogLog{}
			addr := startServer(t, be, func(s *smtp.Server) { s.Debug = dlog; s.MaxMessageBytes = 4 << 20 })
			c := newClient(t, addr, tc.opts)
			for i := 0; i < 2; i++ { // twice: the session stays in step
				res, err := c.Send(Envelope{From: "a@src.test", To: []string{"x@dst.test"}}, Bytes([]byte(tc.body)))
				if err != nil || res.Data != nil || res.Rcpt[0] != nil {
					t.Fatalf("Send %d = %+v, %v", i, res, err)
				}
				if res.DotReply == "" {
					t.Errorf("Send %d: DotReply empty", i)
				}
			}
			_, _, msgs := be.snapshot()
			if len(msgs) != 2 || msgs[0].data != tc.want || msgs[1].data != tc.want {
				t.Fatalf("server got %d messages, want 2 of %d bytes", len(msgs), len(tc.want))
			}
			dialog := dlog.String()
			bdat := "BDAT " + strconv.Itoa(len(tc.want)) + " LAST\r\n"
			if got := strings.Contains(dialog, bdat); got != tc.wantChunked {
				t.Errorf("%q in the dialog: %v, want %v", bdat, got, tc.wantChunked)
			}
			if got := strings.Contains(dialog, "\r\nDATA\r\n"); got == tc.wantChunked {
				t.Errorf("DATA in the dialog: %v, want %v", got, !tc.wantChunked)
			}
		})
	}
}

func TestIsCRLFText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		"a\r\n": true, "a\r\nb\r\n": true, "\r\n\r\n": true,
		"": false, "a": false, "a\r\nb": false, "a\nb\r\n": false, "a\rb\r\n": false,
		"a\r\r\n": false, "a\r\n\n": false, "\n": false, "\r": false,
	} {
		if got := isCRLFText([]byte(in)); got != want {
			t.Errorf("isCRLFText(%q) = %v, want %v", in, got, want)
		}
	}
}
