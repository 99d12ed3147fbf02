package smtpclient

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestReadReply(t *testing.T) {
	t.Parallel()
	long := "550 5.1.1 " + strings.Repeat("x", 3*readBufSize)
	tooLong := "250 " + strings.Repeat("x", maxReplyLine+1)
	many := strings.Repeat("250-x\r\n", maxReplyLines) + "250 x\r\n"
	for _, tc := range []struct {
		name  string
		in    string
		want  reply
		lines []string
		err   error
	}{
		{"simple", "250 ok\r\n", reply{250, smtp.EnhancedCode{}, "ok"}, []string{"ok"}, nil},
		{"enhanced", "550 5.1.1 no such user\r\n", reply{550, smtp.EnhancedCode{5, 1, 1}, "no such user"}, []string{"no such user"}, nil},
		{"code only", "250\r\n", reply{250, smtp.EnhancedCode{}, ""}, []string{""}, nil},
		{"enhanced only", "451 4.3.0\r\n", reply{451, smtp.EnhancedCode{4, 3, 0}, ""}, []string{""}, nil},
		{"bare LF", "220 mx ready\n", reply{220, smtp.EnhancedCode{}, "mx ready"}, []string{"mx ready"}, nil},
		{"multi-line", "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n",
			reply{550, smtp.EnhancedCode{5, 7, 1}, "first\nsecond\nthird"}, []string{"first", "second", "third"}, nil},
		{"ehlo", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
			reply{250, smtp.EnhancedCode{}, "mx.test\nPIPELINING\nSIZE 1000"}, []string{"mx.test", "PIPELINING", "SIZE 1000"}, nil},
		{"class mismatch stays text", "550 4.1.1 odd\r\n", reply{550, smtp.EnhancedCode{}, "4.1.1 odd"}, nil, nil},
		{"ip is not a code", "250 2.1.0.4 hi\r\n", reply{250, smtp.EnhancedCode{}, "2.1.0.4 hi"}, nil, nil},
		{"four digits not a code", "250 2.1000.0 hi\r\n", reply{250, smtp.EnhancedCode{}, "2.1000.0 hi"}, nil, nil},
		{"three-digit parts", "550 5.123.456 x\r\n", reply{550, smtp.EnhancedCode{5, 123, 456}, "x"}, nil, nil},
		{"short", "25\r\n", reply{}, nil, errMalformed},
		{"letters", "2x0 ok\r\n", reply{}, nil, errMalformed},
		{"1yz", "100 ok\r\n", reply{}, nil, errMalformed},
		{"bad separator", "250_ok\r\n", reply{}, nil, errMalformed},
		{"mixed codes", "250-a\r\n251 b\r\n", reply{}, nil, errMalformed},
		// Past what is kept a reply is still read, and its code is what counts.
		{"long line cut", long + "\r\nNEXT", reply{550, smtp.EnhancedCode{5, 1, 1}, long[10:readBufSize]}, nil, nil},
		{"line too long", tooLong + "\r\n", reply{}, nil, errMalformed},
		{"too many lines", many, reply{}, nil, errMalformed},
		{"eof mid-reply", "250-a\r\n", reply{}, nil, io.ErrUnexpectedEOF},
		{"eof mid-line", "250 a", reply{}, nil, io.ErrUnexpectedEOF},
		{"eof", "", reply{}, nil, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var lines []string
			got, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), readBufSize), &lines, false)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("readReply = %+v, %v; want %+v", got, err, tc.want)
			}
			if tc.lines != nil && !reflect.DeepEqual(lines, tc.lines) {
				t.Errorf("lines = %q, want %q", lines, tc.lines)
			}
		})
	}
}

// TestReadWordyReply: a permanent refusal explained over 100 long lines
// (more text than is kept) is still a 550 5.1.1, with its first 32 KiB.
func TestReadWordyReply(t *testing.T) {
	t.Parallel()
	wordy := strings.Repeat("550-5.1.1 "+strings.Repeat("w", 400)+"\r\n", 99) + "550 5.1.1 end\r\n"
	got, err := readReply(bufio.NewReaderSize(strings.NewReader(wordy+"250 next\r\n"), readBufSize), nil, false)
	if err != nil || got.code != 550 || got.enh != (smtp.EnhancedCode{5, 1, 1}) || len(got.text) > maxReplyText ||
		!strings.HasPrefix(got.text, strings.Repeat("w", 400)+"\n") {
		t.Fatalf("readReply = %d %v (%d bytes of text), %v", got.code, got.enh, len(got.text), err)
	}
}

// The success path keeps no text unless asked, and error replies always
// keep theirs.
func TestReadReplyTextOnDemand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, text string
		want     bool
	}{
		{"250 2.1.0 ok\r\n", "", false},
		{"250 2.1.0 ok\r\n", "ok", true},
		{"450 4.2.0 busy\r\n", "busy", false},
	} {
		got, err := readReply(bufio.NewReader(strings.NewReader(tc.in)), nil, tc.want)
		if err != nil || got.text != tc.text {
			t.Errorf("readReply(%q, want=%v) = %+v, %v; want text %q", tc.in, tc.want, got, err, tc.text)
		}
	}
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 ok\r\n",
		"550-5.7.1 a\r\n550 5.7.1 b\r\n",
		"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n354 go\r\n",
		"421 4.3.2 bye\n",
		"250 2.1000.1 x\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(strings.NewReader(string(data)), readBufSize)
		for range 16 {
			var lines []string
			rep, err := readReply(r, &lines, true)
			if err != nil {
				return
			}
			if rep.code < 200 || rep.code > 599 {
				t.Fatalf("code %d accepted from %q", rep.code, data)
			}
			if rep.enh != (smtp.EnhancedCode{}) && rep.enh[0] != rep.code/100 {
				t.Fatalf("enhanced code %v for reply %d", rep.enh, rep.code)
			}
			if len(lines) == 0 || len(lines) > maxReplyLines || len(rep.text) > maxReplyText {
				t.Fatalf("%d lines, %d bytes of text", len(lines), len(rep.text))
			}
			if rep.text != strings.Join(lines, "\n") {
				t.Fatalf("text %q != lines %q", rep.text, lines)
			}
		}
	})
}
