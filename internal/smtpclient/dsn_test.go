package smtpclient

import (
	"testing"

	"github.com/emersion/go-smtp"
)

func TestXtext(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"abc-123", "abc-123"},
		{"a+b=c", "a+2Bb+3Dc"},
		{"a b\x01", "a+20b+01"},
		{"caf\xc3\xa9", "caf+C3+A9"},
	} {
		if got := string(appendXtext(nil, tc.in)); got != tc.want {
			t.Errorf("xtext(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"joe@example.com", "joe@example.com"},
		{"j\u00f6e+x@b\u00fccher.example", `j\x{F6}e\x{2B}x@b\x{FC}cher.example`},
		{"\u7528\u6237@\u4f8b\u5b50", `\x{7528}\x{6237}@\x{4F8B}\x{5B50}`},
		{"a\\b=c d", `a\x{5C}b\x{3D}c\x{20}d`},
	} {
		if got := string(AppendUTF8AddrXtext(nil, tc.in)); got != tc.want {
			t.Errorf("utf-8-addr-xtext(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRcptDSNParameters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d    RcptDSN
		want string
	}{
		{RcptDSN{}, ""},
		{RcptDSN{Notify: "NEVER"}, " NOTIFY=NEVER"},
		{RcptDSN{Notify: "SUCCESS,FAILURE,DELAY", ORcpt: "rfc822;a+b@x.example"}, " NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;a+2Bb@x.example"},
		{RcptDSN{ORcpt: "rfc822;j\u00f6e@x.example"}, ` ORCPT=utf-8;j\x{F6}e@x.example`},
		{RcptDSN{ORcpt: "utf-8;joe@x.example"}, ` ORCPT=utf-8;joe@x.example`},
		// Malformed values from a store are dropped, never sent broken.
		{RcptDSN{Notify: "NEVER,SUCCESS"}, ""},
		{RcptDSN{Notify: "SUCCESS,SUCCESS"}, ""},
		{RcptDSN{Notify: "FAILURE\r\nRSET"}, ""},
		{RcptDSN{ORcpt: "no-semicolon"}, ""},
		{RcptDSN{ORcpt: "bad type;a@b"}, ""},
		{RcptDSN{ORcpt: "rfc822;"}, ""},
	} {
		if got := string(appendRcptDSN(nil, tc.d)); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.d, got, tc.want)
		}
	}
}

// With DSN offered, MAIL carries RET and ENVID and each RCPT its NOTIFY
// and ORCPT, decoded by the server to what was given; without it, nothing
// is added (go-smtp refuses DSN parameters with 504 when it does not
// offer DSN, so the transaction going through shows none was sent).
func TestDSNPassedOn(t *testing.T) {
	t.Parallel()
	env := Envelope{From: "a@src.test", To: []string{"b@dst.test", "c@dst.test", "d@dst.test"},
		Ret: "HDRS", EnvID: "QID+123=x",
		DSN: []RcptDSN{
			{Notify: "SUCCESS,DELAY", ORcpt: "rfc822;B@orig.example"},
			{},
			{Notify: "NEVER", ORcpt: "utf-8;d\u00f6@orig.example"},
		}}
	for _, offered := range []bool{true, false} {
		forBothTransfers(t, func(t *testing.T, chunked bool) {
			be := &backend{}
			addr := startServer(t, be, func(s *smtp.Server) { s.EnableDSN = offered })
			c := newClient(t, addr, Options{DisableChunking: !chunked})
			if c.Offers("DSN") != offered {
				t.Fatalf("Offers(DSN) = %v, want %v", c.Offers("DSN"), offered)
			}
			res, err := c.Send(env, Bytes([]byte("Subject: x\r\n\r\nhi\r\n")))
			if err != nil || res.Data != nil {
				t.Fatalf("Send = %+v, %v", res, err)
			}
			_, _, msgs := be.snapshot()
			if len(msgs) != 1 || len(msgs[0].rcptOpts) != 3 {
				t.Fatalf("server got %+v", msgs)
			}
			m := msgs[0]
			if !offered {
				if m.opts.Return != "" || m.opts.EnvelopeID != "" {
					t.Errorf("DSN not offered, MAIL got RET=%q ENVID=%q", m.opts.Return, m.opts.EnvelopeID)
				}
				for i, o := range m.rcptOpts {
					if o.Notify != nil || o.OriginalRecipient != "" {
						t.Errorf("DSN not offered, RCPT %d got %+v", i, o)
					}
				}
				return
			}
			if m.opts.Return != smtp.DSNReturnHeaders || m.opts.EnvelopeID != "QID+123=x" {
				t.Errorf("MAIL got RET=%q ENVID=%q", m.opts.Return, m.opts.EnvelopeID)
			}
			r := m.rcptOpts
			if len(r[0].Notify) != 2 || r[0].Notify[0] != smtp.DSNNotifySuccess || r[0].Notify[1] != smtp.DSNNotifyDelayed ||
				r[0].OriginalRecipientType != smtp.DSNAddressTypeRFC822 || r[0].OriginalRecipient != "B@orig.example" {
				t.Errorf("RCPT 0 got %+v", r[0])
			}
			if r[1].Notify != nil || r[1].OriginalRecipient != "" {
				t.Errorf("RCPT 1 got %+v, want no parameters", r[1])
			}
			if len(r[2].Notify) != 1 || r[2].Notify[0] != smtp.DSNNotifyNever ||
				r[2].OriginalRecipientType != smtp.DSNAddressTypeUTF8 || r[2].OriginalRecipient != "d\u00f6@orig.example" {
				t.Errorf("RCPT 2 got %+v", r[2])
			}
		})
	}
}

// A server without SMTPUTF8 gets the envelope downgraded: IDN domains as
// A-labels and no SMTPUTF8 (go-smtp refuses it with 504 when not offered);
// a recipient with a non-ASCII local part fails alone, permanently, with
// 553 5.6.7, and the others are delivered.
func TestSMTPUTF8Downgrade(t *testing.T) {
	t.Parallel()
	forBothTransfers(t, func(t *testing.T, chunked bool) {
		be := &backend{}
		addr := startServer(t, be, nil)
		c := newClient(t, addr, Options{DisableChunking: !chunked})
		env := Envelope{From: "a@b\u00fccher.example", To: []string{"x@m\u00fcnchen.example", "j\u00f6e@dst.test", "y@dst.test", "z@\u0301x.example"}, UTF8: true}
		res, err := c.Send(env, Bytes([]byte("hi\r\n")))
		if err != nil || res.Data != nil {
			t.Fatalf("Send = %+v, %v", res, err)
		}
		if res.Rcpt[0] != nil || res.Rcpt[2] != nil {
			t.Errorf("convertible recipients refused: %v, %v", res.Rcpt[0], res.Rcpt[2])
		}
		if e := res.Rcpt[1]; e == nil || e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) || e.Temporary ||
			e.Phase != "rcpt" || e.Message != "recipient requires SMTPUTF8, not offered by mx.test" {
			t.Errorf("non-ASCII local part: %+v, want a permanent 553 5.6.7 in phase rcpt", e)
		}
		if e := res.Rcpt[3]; e == nil || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 1, 3}) {
			t.Errorf("invalid IDN: %+v, want a permanent 5.1.3", e)
		}
		_, _, msgs := be.snapshot()
		if len(msgs) != 1 {
			t.Fatalf("server got %d messages", len(msgs))
		}
		m := msgs[0]
		if m.from != "a@xn--bcher-kva.example" || m.opts.UTF8 {
			t.Errorf("MAIL FROM %q SMTPUTF8=%v, want the A-label form without SMTPUTF8", m.from, m.opts.UTF8)
		}
		if len(m.rcpts) != 2 || m.rcpts[0] != "x@xn--mnchen-3ya.example" || m.rcpts[1] != "y@dst.test" {
			t.Errorf("RCPTs %q", m.rcpts)
		}
	})
}

// A sender whose local part is not ASCII cannot go to a server without
// SMTPUTF8: every recipient fails 5.6.7 and nothing is sent.
func TestSMTPUTF8SenderNotConvertible(t *testing.T) {
	t.Parallel()
	be := &backend{}
	addr := startServer(t, be, nil)
	c := newClient(t, addr, Options{})
	res, err := c.Send(Envelope{From: "ren\u00e9@src.test", To: []string{"a@dst.test", "b@dst.test"}, UTF8: true}, Bytes([]byte("hi\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range append(res.Rcpt, res.Data) {
		if e == nil || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) {
			t.Errorf("result %d = %+v, want permanent 5.6.7", i, e)
		}
	}
	if _, mails, _ := be.snapshot(); len(mails) != 0 {
		t.Errorf("server saw MAIL %v", mails)
	}
}
