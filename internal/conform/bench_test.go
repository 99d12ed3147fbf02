package conform

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
)

// message100KB is a typical 100 KB message: text and HTML alternatives and a
// base64 attachment, all conformant, so Scan finds nothing to do.
func message100KB() []byte {
	var b bytes.Buffer
	b.WriteString("From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: monthly report\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_outer\"\r\n\r\n" +
		"--=_outer\r\nContent-Type: multipart/alternative; boundary=\"=_alt\"\r\n\r\n--=_alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2)[:76] + "\r\n"
	for b.Len() < 20_000 {
		b.WriteString(line)
	}
	b.WriteString("--=_alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n")
	for b.Len() < 50_000 {
		b.WriteString("<p>" + line)
	}
	b.WriteString("--=_alt--\r\n--=_outer\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1, 200, 3, 4, 250}, 7_500))
	for len(enc) > 76 && b.Len() < 100_000 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString("--=_outer--\r\n")
	return b.Bytes()
}

func BenchmarkScan100KB(b *testing.B) {
	msg := message100KB()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		rep, err := Scan(bytes.NewReader(msg))
		if err != nil || rep.NeedsRewrite(Options{To7Bit: true}) {
			b.Fatalf("%v %+v", err, rep)
		}
	}
}

// BenchmarkRewrite re-encodes the text part of the 100 KB message after a
// 2,100-octet line is put into it.
func BenchmarkRewrite(b *testing.B) {
	msg := message100KB()
	i := bytes.Index(msg, []byte("charset=utf-8\r\n\r\n")) + len("charset=utf-8\r\n\r\n")
	msg = append(append(append([]byte{}, msg[:i]...), long2100+"\r\n"...), msg[i:]...)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		res, err := Rewrite(opener(msg, nil), io.Discard, Options{})
		if err != nil || res.Reencoded != 1 {
			b.Fatalf("%v %+v", err, res)
		}
	}
}
