package conform

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// opener serves b as a source that can be opened twice, counting the opens.
func opener(b []byte, opens *int) Opener {
	return func() (io.ReadCloser, error) {
		if opens != nil {
			*opens++
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

func rewrite(t *testing.T, in string, o Options) (string, Result) {
	t.Helper()
	var out bytes.Buffer
	opens := 0
	res, err := Rewrite(opener([]byte(in), &opens), &out, o)
	if err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	if opens != 2 {
		t.Fatalf("source opened %d times, want 2", opens)
	}
	checkConformant(t, out.Bytes(), o)
	return out.String(), res
}

// checkConformant: every line ends in CRLF and has at most 998 octets, and
// with To7Bit no octet is 8-bit.
func checkConformant(t *testing.T, out []byte, o Options) {
	t.Helper()
	if len(out) > 0 && !bytes.HasSuffix(out, crlf) {
		t.Errorf("output does not end in CRLF: ...%q", out[max(0, len(out)-20):])
	}
	for i, line := range bytes.Split(out, lf) {
		if len(bytes.TrimSuffix(line, cr)) > MaxLine {
			t.Errorf("output line %d has %d octets", i+1, len(line))
		}
	}
	if o.To7Bit && hasHigh(out) {
		t.Errorf("7-bit output has an 8-bit octet")
	}
}

// decodePart decodes a part body by its Content-Transfer-Encoding with the
// standard library's decoders.
func decodePart(t *testing.T, cte string, body []byte) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, r)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decoding %s: %v", cte, err)
	}
	return b
}

// leaf is a leaf part read back with the standard library.
type leaf struct {
	ctype, cte string
	raw        []byte // as it is in the message
	content    []byte // decoded
}

// leaves reads a message with net/mail and mime/multipart (not with this
// package's parser) and returns its leaf parts in order.
func leaves(t *testing.T, msg string) []leaf {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	var out []leaf
	collectLeaves(t, m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body, "", &out)
	return out
}

func collectLeaves(t *testing.T, ct, cte string, body io.Reader, deftype string, out *[]leaf) {
	t.Helper()
	mt, params, _ := mime.ParseMediaType(ct)
	if ct == "" {
		mt = deftype
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		mr := multipart.NewReader(bytes.NewReader(raw), params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("NextRawPart: %v", err)
			}
			def := ""
			if mt == "multipart/digest" {
				def = "message/rfc822"
			}
			collectLeaves(t, p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, def, out)
		}
	case mt == "message/rfc822":
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("ReadMessage inner: %v", err)
		}
		collectLeaves(t, m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body, "", out)
	default:
		*out = append(*out, leaf{ctype: mt, cte: cte, raw: raw, content: decodePart(t, cte, raw)})
	}
}

func words(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "w%d ", i)
	}
	return b.String()[:n]
}

var long2100 = strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz=. \t", 60)[:2100]

func TestScanAndRewrite(t *testing.T) {
	t.Parallel()
	textBody := "first line\r\n" + long2100 + "\r\nlast line\r\n"
	attach := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0, 1, 2, 0xff}, 100))
	attachWrapped := attach[:76] + "\r\n" + attach[76:152] + "\r\n" + attach[152:] + "\r\n"
	binLine := string(bytes.Repeat([]byte("\x01\x7fbin"), 400)) // 2,000 octets, no 8-bit
	eight := "Grüße aus Köln, ça va?\r\nZweite Zeile é\r\n"

	cases := []struct {
		name string
		in   string
		opts Options
		// want: the leaf parts of the output, decoded, and their encodings.
		want     []leaf
		reenc    int
		rewrap   int
		unchange []string // substrings of the input that must be in the output as they are
	}{
		{
			name:  "single text part, 2100-octet line to QP",
			in:    "From: a@example.com\r\nSubject: hi\r\n\r\n" + textBody,
			want:  []leaf{{ctype: "", cte: "quoted-printable", content: []byte(textBody)}},
			reenc: 1,
		},
		{
			name: "multipart: long text part re-encoded, attachment untouched",
			in: "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble text\r\n" +
				"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + textBody +
				"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + attachWrapped +
				"--b1--  \r\nepilogue\r\n",
			want: []leaf{
				{ctype: "text/plain", cte: "quoted-printable", content: []byte(strings.TrimSuffix(textBody, "\r\n"))},
				{ctype: "application/octet-stream", cte: "base64", content: bytes.Repeat([]byte{0, 1, 2, 0xff}, 100)},
			},
			reenc:    1,
			unchange: []string{"preamble text\r\n--b1\r\n", "Content-Transfer-Encoding: base64\r\n\r\n" + attachWrapped + "--b1--  \r\nepilogue\r\n"},
		},
		{
			name: "non-text part with a long line to base64",
			in: "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: application/x-thing\r\n\r\n" +
				binLine + "\r\n" + binLine + "\r\n--zz--\r\n",
			want:  []leaf{{ctype: "application/x-thing", cte: "base64", content: []byte(binLine + "\r\n" + binLine)}},
			reenc: 1,
		},
		{
			name: "nested multipart",
			in: "Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n" +
				"Content-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nshort\r\n" +
				"--inner\r\nContent-Type: text/html\r\n\r\n<p>" + long2100 + "</p>\r\n--inner--\r\n" +
				"--outer\r\nContent-Type: text/plain\r\n\r\nafter\r\n--outer--\r\n",
			want: []leaf{
				{ctype: "text/plain", content: []byte("short")},
				{ctype: "text/html", cte: "quoted-printable", content: []byte("<p>" + long2100 + "</p>")},
				{ctype: "text/plain", content: []byte("after")},
			},
			reenc:    1,
			unchange: []string{"--inner\r\nContent-Type: text/plain\r\n\r\nshort\r\n--inner\r\n", "--outer\r\nContent-Type: text/plain\r\n\r\nafter\r\n--outer--\r\n"},
		},
		{
			name: "message/rfc822 recursed into",
			in: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n" +
				"From: inner@example.com\r\nSubject: inner\r\n\r\n" + textBody + "--m--\r\n",
			want:  []leaf{{ctype: "", cte: "quoted-printable", content: []byte(strings.TrimSuffix(textBody, "\r\n"))}},
			reenc: 1,
		},
		{
			name:  "8-bit text to QP for a receiver without 8BITMIME",
			in:    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + eight,
			opts:  Options{To7Bit: true},
			want:  []leaf{{ctype: "text/plain", cte: "quoted-printable", content: []byte(eight)}},
			reenc: 1,
		},
		{
			name: "8-bit: encoded parts left alone, 8-bit leaf converted, container relabelled",
			in: "Content-Type: multipart/mixed; boundary=q\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
				"--q\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n" +
				"--q\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + attachWrapped +
				"--q\r\nContent-Type: application/octet-stream\r\n\r\n\x00\xff\xfe\r\n--q--\r\n",
			opts: Options{To7Bit: true},
			want: []leaf{
				{ctype: "text/plain", cte: "quoted-printable", content: []byte("Grüße")},
				{ctype: "image/png", cte: "base64", content: bytes.Repeat([]byte{0, 1, 2, 0xff}, 100)},
				{ctype: "application/octet-stream", cte: "base64", content: []byte("\x00\xff\xfe")},
			},
			reenc: 1,
			unchange: []string{"Content-Transfer-Encoding: 7bit\r\n\r\n--q\r\n", // the container relabelled
				"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n--q\r\n",
				"Content-Transfer-Encoding: base64\r\n\r\n" + attachWrapped + "--q\r\n"},
		},
		{
			name: "already QP with a long line: soft breaks added, same content",
			in: "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
				strings.Repeat("ab=3Dc ", 300) + "x\r\nend\r\n",
			want:   []leaf{{ctype: "text/plain", cte: "quoted-printable", content: []byte(strings.Repeat("ab=c ", 300) + "x\r\nend\r\n")}},
			rewrap: 1,
		},
		{
			name: "already base64 with a long line: re-cut at 76",
			in: "Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
				base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("xyz\x80"), 600)) + "\r\n",
			want:   []leaf{{ctype: "image/gif", cte: "base64", content: bytes.Repeat([]byte("xyz\x80"), 600)}},
			rewrap: 1,
		},
		{
			name: "multipart/digest parts default to message/rfc822",
			in: "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\n" + textBody +
				"--d--\r\n",
			want:  []leaf{{ctype: "", cte: "quoted-printable", content: []byte(strings.TrimSuffix(textBody, "\r\n"))}},
			reenc: 1,
		},
		{
			name:  "bare LF and CR in a re-encoded part survive as octets",
			in:    "Subject: x\r\n\r\nfirst\nsecond\rthird " + long2100 + "\r\n",
			want:  []leaf{{cte: "quoted-printable", content: []byte("first\nsecond\rthird " + long2100 + "\r\n")}},
			reenc: 1,
		},
		{
			name:  "no final line end: QP ends in a soft break",
			in:    "Subject: x\r\n\r\n" + long2100,
			want:  []leaf{{cte: "quoted-printable", content: []byte(long2100)}},
			reenc: 1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rep, err := Scan(strings.NewReader(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !rep.NeedsRewrite(c.opts) {
				t.Fatalf("Scan says no rewrite needed: %+v", rep)
			}
			out, res := rewrite(t, c.in, c.opts)
			if !res.Changed || res.Reencoded != c.reenc || res.Rewrapped != c.rewrap {
				t.Errorf("Result = %+v, want %d re-encoded, %d re-wrapped", res, c.reenc, c.rewrap)
			}
			got := leaves(t, out)
			if len(got) != len(c.want) {
				t.Fatalf("%d leaves, want %d:\n%s", len(got), len(c.want), out)
			}
			for i, w := range c.want {
				g := got[i]
				if g.ctype != w.ctype || !strings.EqualFold(g.cte, w.cte) {
					t.Errorf("leaf %d: type %q cte %q, want %q %q", i, g.ctype, g.cte, w.ctype, w.cte)
				}
				if !bytes.Equal(g.content, w.content) {
					t.Errorf("leaf %d: decoded content differs:\n got %q\nwant %q", i, trunc(g.content), trunc(w.content))
				}
			}
			for _, s := range c.unchange {
				if !strings.Contains(out, s) {
					t.Errorf("output lost %q:\n%s", s, out)
				}
			}
			// The output needs nothing more.
			rep2, err := Scan(strings.NewReader(out))
			if err != nil {
				t.Fatal(err)
			}
			if rep2.NeedsRewrite(c.opts) {
				t.Errorf("output still needs a rewrite: %+v", rep2)
			}
		})
	}
}

func trunc(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func TestNoRewriteNeeded(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"From: a@example.com\r\nSubject: plain\r\n\r\nHello.\r\n",
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n" +
			strings.Repeat("x", MaxLine) + "\r\n--b--\r\n",
		// 8-bit is fine for a receiver with 8BITMIME.
		"Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n",
	} {
		rep, err := Scan(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if rep.NeedsRewrite(Options{}) {
			t.Errorf("Scan says a rewrite is needed for %q: %+v", in, rep)
		}
		out, res := rewrite(t, in, Options{})
		if res.Changed || out != in {
			t.Errorf("Rewrite changed %q to %q (%+v)", in, out, res)
		}
	}
}

func TestHeaderFolding(t *testing.T) {
	t.Parallel()
	subject := strings.TrimSpace(words(1500))
	in := "Subject: " + subject + "\r\nTo: b@example.com\r\n\r\nbody\r\n"
	rep, err := Scan(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.LongHeaders || rep.Unfoldable || rep.LongLines {
		t.Fatalf("report %+v", rep)
	}
	out, res := rewrite(t, in, Options{})
	if res.Folded != 1 {
		t.Errorf("Folded = %d", res.Folded)
	}
	m, err := mail.ReadMessage(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	// Unfolding (RFC 5322 §2.2.3) gives back the field as it was.
	if got := m.Header.Get("Subject"); got != subject {
		t.Errorf("unfolded Subject differs:\n got %q\nwant %q", got, subject)
	}
	if !strings.HasSuffix(out, "\r\nTo: b@example.com\r\n\r\nbody\r\n") {
		t.Errorf("rest of the message changed: %q", out)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	deep := ""
	for i := 0; i <= MaxDepth; i++ {
		deep += fmt.Sprintf("Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i)
	}
	cases := []struct {
		name string
		in   string
		opts Options
		want error
		code int
		enh  [3]int
		scan bool // Scan itself refuses
	}{
		{"unfoldable header", "Subject: " + strings.Repeat("x", 1200) + "\r\n\r\nb\r\n", Options{}, ErrUnfoldable, 554, [3]int{5, 6, 0}, false},
		{"header too big", "Subject: x\r\n" + strings.Repeat("X-A: "+strings.Repeat("y", 90)+"\r\n", 3000) + "\r\nb\r\n", Options{}, ErrHeaderTooBig, 552, [3]int{5, 3, 4}, true},
		{"too deep", deep, Options{}, ErrTooDeep, 554, [3]int{5, 6, 0}, true},
		{"long preamble line", "Content-Type: multipart/mixed; boundary=b\r\n\r\n" + long2100 + "\r\n--b\r\n\r\nx\r\n--b--\r\n", Options{}, ErrCannotConform, 554, [3]int{5, 6, 0}, false},
		{"long line in unknown encoding", "Content-Transfer-Encoding: x-uuencode\r\n\r\n" + long2100 + "\r\n", Options{}, ErrCannotConform, 554, [3]int{5, 6, 0}, false},
		{"8-bit in a multipart without boundary", "Content-Type: multipart/mixed\r\n\r\nGrüße\r\n", Options{To7Bit: true}, ErrConversion, 554, [3]int{5, 6, 3}, false},
		{"non-ASCII local part", "From: Jörg <jörg@example.com>\r\n\r\nx\r\n", Options{To7Bit: true}, ErrNeedsUTF8, 554, [3]int{5, 6, 7}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, serr := Scan(strings.NewReader(c.in))
			var out bytes.Buffer
			_, err := Rewrite(opener([]byte(c.in), nil), &out, c.opts)
			if c.scan != (serr != nil) {
				t.Errorf("Scan error = %v", serr)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Rewrite error = %v, want %v", err, c.want)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatal("not a *conform.Error")
			}
			se := ce.SMTPError()
			if se.Code != c.code || se.EnhancedCode != c.enh {
				t.Errorf("reply %d %v, want %d %v", se.Code, se.EnhancedCode, c.code, c.enh)
			}
		})
	}
}

func TestScanReport(t *testing.T) {
	t.Parallel()
	in := "Subject: Grüße\r\n\r\na\x00b\nc\rd\r\nno end"
	rep, err := Scan(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.HeaderEightBit || rep.EightBit || !rep.NUL || !rep.BareLF || !rep.BareCR || !rep.Unterminated || rep.LongLines || rep.Entities != 1 {
		t.Errorf("report %+v", rep)
	}
	// A CR at the end of a 64 KiB buffer followed by LF is still a CRLF.
	in = "Subject: x\r\n\r\n" + strings.Repeat("y", bufSize-1) + "\r\n"
	if rep, err = Scan(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if rep.BareCR || rep.BareLF || !rep.LongLines || rep.Unterminated {
		t.Errorf("report %+v", rep)
	}
	// A line longer than the read buffer is no boundary.
	in = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n--b" + strings.Repeat(" ", bufSize) + "\r\nx\r\n--b--\r\n"
	if rep, err = Scan(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if rep.Entities != 2 || !rep.LongLines {
		t.Errorf("report %+v", rep)
	}
}

func TestOpenFails(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	_, err := Rewrite(func() (io.ReadCloser, error) { return nil, boom }, io.Discard, Options{})
	if !errors.Is(err, boom) {
		t.Errorf("err = %v", err)
	}
}

func TestDowngradeHeader(t *testing.T) {
	t.Parallel()
	in := "From: Jörg Müller <joerg@bücher.example>\r\nSubject: Grüße\r\n aus Köln\r\nTo: plain@example.com\r\n"
	if !HeaderNonASCII([]byte(in)) || HeaderNonASCII([]byte("To: a@b\r\n")) {
		t.Fatal("HeaderNonASCII")
	}
	out, err := DowngradeHeader([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if HeaderNonASCII(out) {
		t.Fatalf("still non-ASCII: %q", out)
	}
	m, err := mail.ReadMessage(strings.NewReader(string(out) + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var dec mime.WordDecoder
	if s, _ := dec.DecodeHeader(m.Header.Get("Subject")); s != "Grüße aus Köln" {
		t.Errorf("Subject decodes to %q", s)
	}
	from, err := m.Header.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Name != "Jörg Müller" || from[0].Address != "joerg@xn--bcher-kva.example" {
		t.Errorf("From = %v, %v (%q)", from, err, out)
	}
	if !strings.Contains(string(out), "To: plain@example.com\r\n") {
		t.Errorf("ASCII field changed: %q", out)
	}
	for _, bad := range []string{"Received: from ü.example\r\n", "Subject: \xff\xfe\r\n", "To: ü@example.com\r\n"} { // a non-ASCII HELO name stays refused
		if _, err := DowngradeHeader([]byte(bad)); !errors.Is(err, ErrNeedsUTF8) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	// mtad's own trace field of an SMTPUTF8 message: an IDN domain becomes
	// its A-label, a path with a UTF-8 local part goes with its clause.
	for _, tc := range []struct{ in, want string }{
		{"Received: from c.example (unknown [127.0.0.1])\r\n\tby mx (mtad) with UTF8SMTP id X\r\n\t(envelope-from <a@münchen.example>) for <b@bücher.example>;\r\n\tWed, 02 Dec 2026 01:48:20 +0000\r\n",
			"(envelope-from <a@xn--mnchen-3ya.example>) for <b@xn--bcher-kva.example>;"},
		{"Received: from c.example by mx with UTF8SMTP id X (envelope-from <jö@a.example>) for <ü@b.example>; Wed, 02 Dec 2026 01:48:20 +0000\r\n",
			"with UTF8SMTP id X; Wed"},
	} {
		out, err := DowngradeHeader([]byte(tc.in))
		if err != nil || HeaderNonASCII(out) || !strings.Contains(strings.Join(strings.Fields(string(out)), " "), tc.want) {
			t.Errorf("Received %q downgrades to %q, %v; want it to hold %q", tc.in, out, err, tc.want)
		}
	}

	// In a rewrite for a 7-bit receiver the header is downgraded too.
	msg := "Subject: Grüße\r\n\r\nGrüße\r\n"
	outMsg, res := rewrite(t, msg, Options{To7Bit: true})
	if res.Headers != 1 || res.Reencoded != 1 {
		t.Errorf("Result %+v: %q", res, outMsg)
	}
	// For a receiver with 8BITMIME but no SMTPUTF8 only the header changes.
	outMsg, res = rewrite(t, msg, Options{ASCIIHeaders: true})
	if res.Headers != 1 || res.Reencoded != 0 || !strings.HasSuffix(outMsg, "\r\n\r\nGrüße\r\n") || HeaderNonASCII([]byte(outMsg[:strings.Index(outMsg, "\r\n\r\n")])) {
		t.Errorf("Result %+v: %q", res, outMsg)
	}
}

func TestFoldPoints(t *testing.T) {
	t.Parallel()
	cases := []struct {
		line string
		ok   bool
	}{
		{"Subject: " + words(3000), true},
		{"Subject: " + strings.Repeat("x", 990) + " " + strings.Repeat("y", 990), true},
		{"Subject: " + strings.Repeat("x", 1000) + " y", false},
		{"X: a" + strings.Repeat(" ", 2000) + "b", false},      // only one place to fold, too far
		{"Subject" + strings.Repeat(" ", 1000) + ": x", false}, // never before the colon
	}
	for _, c := range cases {
		line := []byte(c.line)
		pts, ok := foldPoints(line, foldMin(line), nil)
		if ok != c.ok {
			t.Errorf("%.30q...: ok = %v", c.line, ok)
			continue
		}
		if !ok {
			continue
		}
		prev := 0
		for _, p := range append(pts, len(line)) {
			seg := line[prev:p]
			if len(seg) > MaxLine || len(bytes.Trim(seg, " \t")) == 0 {
				t.Errorf("bad segment %q", seg)
			}
			if prev > 0 && !isWSP(seg[0]) {
				t.Errorf("continuation without WSP: %.20q", seg)
			}
			prev = p
		}
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	text := &entity{mtype: "text/plain", text: true}
	bin := &entity{mtype: "application/pdf"}
	qp := &entity{mtype: "text/plain", text: true, cte: "quoted-printable"}
	b64 := &entity{mtype: "image/png", cte: "base64"}
	global := &entity{mtype: "message/global"}
	partial := &entity{mtype: "message/partial"}
	multi := &entity{mtype: "multipart/mixed", kind: kindMultipart, cte: "8bit"}
	cases := []struct {
		e    *entity
		f    uint8
		o    Options
		want action
		err  error
	}{
		{text, 0, Options{To7Bit: true}, actKeep, nil},
		{text, f8bit, Options{}, actKeep, nil},
		{text, f8bit, Options{To7Bit: true}, actQP, nil},
		{text, fLong, Options{}, actQP, nil},
		{bin, fLong, Options{}, actBase64, nil},
		{bin, fNUL, Options{To7Bit: true}, actBase64, nil},
		{qp, fLong, Options{}, actWrapQP, nil},
		{qp, 0, Options{To7Bit: true}, actKeep, nil},
		{b64, f8bit, Options{To7Bit: true}, actWrapB64, nil},
		{global, f8bit, Options{To7Bit: true}, actBase64, nil},
		{partial, fLong, Options{}, actKeep, ErrCannotConform},
		{multi, fLong, Options{}, actKeep, nil}, // containers: their children decide
	}
	for i, c := range cases {
		got, err := decide(c.e, c.f, c.o)
		if got != c.want || !errors.Is(err, c.err) && (err != nil || c.err != nil) {
			t.Errorf("case %d: %v, %v; want %v, %v", i, got, err, c.want, c.err)
		}
	}
}
