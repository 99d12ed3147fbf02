package smtpclient

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-smtp"
)

// Bounds on what a remote server may send us in one reply. RFC 5321
// §4.5.3.1.5 allows 512 octets per reply line; we accept more because real
// servers exceed it, but not without limit: a hostile server must not make
// us buffer megabytes or loop for ever.
//
// Past the bounds on what is kept, a reply is still read to its end and its
// code honoured: a 550 with a hundred lines of explanation is a permanent
// refusal, not a broken connection to retry. Only a reply past the bounds
// on what is read is malformed.
const (
	readBufSize   = 4096     // bufio.Reader size: the part of a longer line that is kept
	maxReplyLine  = 64 << 10 // longest reply line read (the rest of a line past readBufSize is skipped)
	maxReplyLines = 1000     // lines in one (multi-line) reply
	maxReplyText  = 32 << 10 // bytes of text kept from one reply; the rest is dropped
)

// errMalformed marks a reply that does not follow RFC 5321 §4.2 syntax.
var errMalformed = errors.New("malformed SMTP reply")

// reply is one parsed SMTP reply.
type reply struct {
	code int
	enh  smtp.EnhancedCode // EnhancedCodeNotSet (zero) when the reply had none
	// text is the reply's lines, without code and enhanced code, joined by
	// "\n". It is filled only when asked for or when the reply is an error
	// (code >= 400), so the success path of a transaction allocates nothing.
	text string
}

func (r reply) class() int { return r.code / 100 }

// smtpError returns the reply as go-smtp's reply type.
func (r reply) smtpError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.code, EnhancedCode: r.enh, Message: r.text}
}

// readReply reads one reply, single or multi-line, from r. When lines is
// not nil each line's text (code and enhanced code removed) is appended to
// it, which is how EHLO's keywords are read. wantText asks for reply.text
// even on success.
//
// An error wrapping errMalformed means the server broke the protocol; any
// other error is the reader's (I/O, deadline). Either way the connection
// cannot be trusted any more.
func readReply(r *bufio.Reader, lines *[]string, wantText bool) (reply, error) {
	var (
		rep   reply
		keep  bool
		multi strings.Builder // only used for multi-line replies we keep
		total int
	)
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return reply{}, fmt.Errorf("%w: more than %d lines", errMalformed, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, io.EOF) && (len(line) > 0 || n > 0) {
				return reply{}, io.ErrUnexpectedEOF
			}
			return reply{}, err
		}
		code, ok := parseCode(line)
		if !ok {
			return reply{}, fmt.Errorf("%w: bad reply code in %q", errMalformed, clip(line))
		}
		last := true
		var txt []byte
		if len(line) > 3 {
			switch line[3] {
			case ' ':
			case '-':
				last = false
			default:
				return reply{}, fmt.Errorf("%w: bad separator in %q", errMalformed, clip(line))
			}
			txt = line[4:]
		}
		if n == 0 {
			rep.code = code
			keep = wantText || lines != nil || code >= 400
		} else if code != rep.code {
			return reply{}, fmt.Errorf("%w: code %d in a %d reply", errMalformed, code, rep.code)
		}
		enh, rest, ok := splitEnhanced(line[0], txt)
		if ok {
			if n == 0 {
				rep.enh = enh
			}
			txt = rest
		}
		if keep && total+len(txt)+1 > maxReplyText {
			keep = false // the text so far is what is kept
		}
		if keep {
			total += len(txt) + 1
			if lines != nil {
				*lines = append(*lines, string(txt))
			}
			switch {
			case n == 0 && last:
				rep.text = string(txt) // the common case: one line, one allocation
			default:
				if n > 0 {
					multi.WriteByte('\n')
				}
				multi.Write(txt)
			}
		}
		if last {
			if n > 0 && multi.Len() > 0 {
				rep.text = multi.String()
			}
			return rep, nil
		}
	}
}

// readLine returns the next reply line without its line end. A line
// longer than the reader's buffer is cut to it (copied, since the rest is
// read past); the rest, up to maxReplyLine, is skipped. The result is
// valid until the next read of r.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		head := append([]byte(nil), line...)
		skipped := len(line)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = r.ReadSlice('\n')
			skipped += len(line)
			if skipped > maxReplyLine+2 { // +2: the line end
				return nil, fmt.Errorf("%w: line longer than %d bytes", errMalformed, maxReplyLine)
			}
		}
		return head, err
	}
	if err != nil {
		return line, err
	}
	line = line[:len(line)-1]
	if k := len(line); k > 0 && line[k-1] == '\r' {
		line = line[:k-1]
	}
	return line, nil
}

// parseCode reads the three-digit reply code at the start of line. SMTP
// replies are 2yz to 5yz (RFC 5321 §4.2.1); 1yz is unused by SMTP.
func parseCode(line []byte) (int, bool) {
	if len(line) < 3 {
		return 0, false
	}
	a, b, c := line[0], line[1], line[2]
	if a < '2' || a > '5' || b < '0' || b > '9' || c < '0' || c > '9' {
		return 0, false
	}
	return int(a-'0')*100 + int(b-'0')*10 + int(c-'0'), true
}

// splitEnhanced parses an RFC 3463 enhanced status code ("class.subject.detail"
// followed by a space or the end) at the start of txt. The class must match
// the reply code's first digit (RFC 2034 §4); anything else is left in the
// text, since a reply like "250 1.2.3.4 accepted" is not a status code.
func splitEnhanced(class byte, txt []byte) (smtp.EnhancedCode, []byte, bool) {
	if len(txt) < 5 || txt[0] != class || txt[1] != '.' {
		return smtp.EnhancedCode{}, txt, false
	}
	subject, i, ok := parseNum(txt, 2)
	if !ok || i >= len(txt) || txt[i] != '.' {
		return smtp.EnhancedCode{}, txt, false
	}
	detail, j, ok := parseNum(txt, i+1)
	if !ok {
		return smtp.EnhancedCode{}, txt, false
	}
	switch {
	case j == len(txt):
	case txt[j] == ' ':
		j++
	default:
		return smtp.EnhancedCode{}, txt, false
	}
	return smtp.EnhancedCode{int(class - '0'), subject, detail}, txt[j:], true
}

// parseNum reads one to three digits of b starting at i.
func parseNum(b []byte, i int) (n, end int, ok bool) {
	start := i
	for i < len(b) && i-start < 3 && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int(b[i]-'0')
		i++
	}
	if i == start || (i < len(b) && b[i] >= '0' && b[i] <= '9') {
		return 0, i, false
	}
	return n, i, true
}

// clip shortens hostile input before it goes into an error message.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
