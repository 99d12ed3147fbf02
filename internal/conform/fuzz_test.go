package conform

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime/quotedprintable"
	"strings"
	"testing"
)

// collector gathers each leaf's transfer encoding and content as this
// package's walker sees them; the fuzz test compares input and output.
type collector struct {
	leaves []collected
}

type collected struct {
	cte     string
	content []byte
}

func (c *collector) header(e *entity, block, blank []byte) error {
	if e.kind == kindLeaf {
		c.leaves = append(c.leaves, collected{cte: e.cte})
	}
	return nil
}
func (c *collector) bodyText(e *entity, b []byte, start bool) error {
	l := &c.leaves[len(c.leaves)-1]
	l.content = append(l.content, b...)
	return nil
}
func (c *collector) bodyEOL(e *entity, eol []byte) error { return c.bodyText(e, eol, false) }
func (c *collector) endLeaf(e *entity, eol []byte, delim bool) error {
	if !delim {
		return c.bodyText(e, eol, false)
	}
	return nil
}
func (c *collector) raw(p piece) error { return nil }

// decoded returns a leaf's content decoded, and false when the input is
// malformed enough that the standard decoders refuse it.
func (l collected) decoded() ([]byte, bool) {
	var r io.Reader
	switch l.cte {
	case "quoted-printable":
		r = quotedprintable.NewReader(bytes.NewReader(l.content))
	case "base64":
		// RFC 2045 §6.8: characters outside the alphabet are ignored.
		clean := bytes.Map(func(r rune) rune {
			if r < 0x80 && isB64(byte(r)) {
				return r
			}
			return -1
		}, l.content)
		r = base64.NewDecoder(base64.StdEncoding, bytes.NewReader(clean))
	default:
		return l.content, true
	}
	b, err := io.ReadAll(r)
	return b, err == nil
}

func FuzzRewrite(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n"+long2100+"\r\n"), false)
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\n\r\n\xff"+long2100+"\r\n--b--\r\n"), true)
	f.Add([]byte("Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"+strings.Repeat("=C3=A9--b ", 120)+"\r\n"), true)
	f.Fuzz(func(t *testing.T, in []byte, to7 bool) {
		o := Options{To7Bit: to7}
		checkRewrapQP(t, in, o)
		rep, err := Scan(bytes.NewReader(in))
		var out bytes.Buffer
		res, rerr := Rewrite(opener(in, nil), &out, o)
		if err != nil {
			if !errors.Is(rerr, err) && rerr.Error() != err.Error() {
				t.Fatalf("Scan failed with %v but Rewrite with %v", err, rerr)
			}
		}
		if rerr != nil {
			var ce *Error
			if !errors.As(rerr, &ce) || ce.Code < 500 {
				t.Fatalf("error is not a permanent *Error: %v", rerr)
			}
			return
		}
		got := out.Bytes()
		if !rep.NeedsRewrite(o) {
			want := in
			if rep.Unterminated {
				want = append(append([]byte{}, in...), crlf...)
			}
			if res.Changed || !bytes.Equal(got, want) {
				t.Fatalf("no rewrite needed, but the output differs")
			}
			return
		}
		if len(got) > 0 && got[len(got)-1] != '\n' {
			t.Fatalf("output does not end with a line end")
		}
		if !rep.BareLF && !rep.BareCR && !bytes.HasSuffix(got, crlf) {
			t.Fatalf("output does not end in CRLF")
		}
		for _, line := range bytes.Split(got, lf) {
			if len(bytes.TrimSuffix(line, cr)) > MaxLine {
				t.Fatalf("output line of %d octets", len(line))
			}
		}
		if to7 && hasHigh(got) {
			t.Fatalf("7-bit output has an 8-bit octet")
		}
		rep2, err := Scan(bytes.NewReader(got))
		if err != nil {
			t.Fatalf("output does not scan: %v", err)
		}
		if rep2.NeedsRewrite(o) {
			t.Fatalf("output still needs a rewrite: %+v", rep2)
		}
		// The structure is kept and every leaf decodes to what it was.
		var a, b collector
		if err := walk(bytes.NewReader(in), &a); err != nil {
			t.Fatal(err)
		}
		if err := walk(bytes.NewReader(got), &b); err != nil {
			t.Fatal(err)
		}
		if len(a.leaves) != len(b.leaves) {
			t.Fatalf("%d leaves became %d:\n%q\n%q", len(a.leaves), len(b.leaves), trunc(in), trunc(got))
		}
		for i := range a.leaves {
			if a.leaves[i].cte == "quoted-printable" {
				// Malformed quoted-printable (which is what gets re-wrapped)
				// has no one decoding: decoders differ on trailing
				// whitespace and stray "=". TestScanAndRewrite checks
				// re-wrapping well-formed text.
				continue
			}
			was, ok := a.leaves[i].decoded()
			if !ok {
				continue
			}
			now, ok := b.leaves[i].decoded()
			if !ok {
				t.Fatalf("leaf %d (%s) does not decode any more:\n%q", i, b.leaves[i].cte, trunc(b.leaves[i].content))
			}
			if !bytes.Equal(was, now) {
				t.Fatalf("leaf %d decodes to\n%q\nwas\n%q", i, trunc(now), trunc(was))
			}
		}
	})
}

// checkRewrapQP: well-formed quoted-printable whose soft line breaks are
// taken out (so its lines run long) is re-wrapped to text that decodes to
// the same octets. The content is in repeated to make lines over 998.
func checkRewrapQP(t *testing.T, in []byte, o Options) {
	if len(in) == 0 {
		return
	}
	content := bytes.Repeat(in, 3000/len(in)+1)[:3000]
	var enc bytes.Buffer
	qw := quotedprintable.NewWriter(&enc)
	qw.Write(content)
	qw.Close()
	long := bytes.ReplaceAll(enc.Bytes(), softBreak, nil)
	hdr := "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
	var out bytes.Buffer
	res, err := Rewrite(opener(append([]byte(hdr), long...), nil), &out, o)
	if err != nil {
		t.Fatalf("re-wrapping quoted-printable: %v", err)
	}
	if !res.Changed {
		return // no line was long: copied (and a final CRLF added)
	}
	got := out.Bytes()
	if !bytes.HasPrefix(got, []byte(hdr)) {
		t.Fatalf("header changed: %q", got)
	}
	for _, line := range bytes.Split(got, lf) {
		if len(line) > 78 {
			t.Fatalf("re-wrapped line of %d octets", len(line))
		}
	}
	// bufio.NewReaderSize: quotedprintable's own 4 KiB buffer would refuse
	// the long lines of the input.
	want, err := io.ReadAll(quotedprintable.NewReader(bufio.NewReaderSize(bytes.NewReader(long), 1<<16)))
	if err != nil {
		t.Fatalf("decoding the input: %v", err)
	}
	now, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(got[len(hdr):])))
	if err != nil {
		t.Fatalf("decoding the output: %v", err)
	}
	if !bytes.Equal(now, want) {
		i := 0
		for i < len(now) && i < len(want) && now[i] == want[i] {
			i++
		}
		t.Fatalf("re-wrapped quoted-printable decodes differently from octet %d: %q, was %q", i, trunc(now[i:]), trunc(want[i:]))
	}
}
