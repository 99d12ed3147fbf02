package conform

import (
	"bytes"
	"fmt"
	"mime"
	"net/mail"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// foldWidth is where folding cuts when it can (RFC 5322 §2.1.1's 78); it
// cuts further out, up to MaxLine, only when there is no whitespace sooner.
const foldWidth = 78

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// foldMin is the first index of a header line a fold may be put at: after
// the colon on a field's first line, so the name stays whole.
func foldMin(line []byte) int {
	if len(line) > 0 && isWSP(line[0]) {
		return 0
	}
	return bytes.IndexByte(line, ':')
}

// foldPoints finds where to insert CRLF in a header line (without its line
// end) so that no piece is over MaxLine octets: before a WSP that follows a
// non-WSP (so no piece is whitespace only, RFC 5322 §3.2.2), after index min.
// Taking the farthest point within foldWidth, else within MaxLine, never
// makes a foldable line unfoldable: a nearer cut still reaches every point
// the farther one could. It reports false when the line cannot be folded.
func foldPoints(line []byte, min int, pts []int) ([]int, bool) {
	ok := func(p int) bool { return p > min && isWSP(line[p]) && !isWSP(line[p-1]) }
	start := 0
	for len(line)-start > MaxLine {
		p := -1
		for q := start + foldWidth; q > start; q-- {
			if ok(q) {
				p = q
				break
			}
		}
		if p < 0 {
			for q := start + MaxLine; q > start+foldWidth; q-- {
				if ok(q) {
					p = q
					break
				}
			}
		}
		if p < 0 {
			return pts, false
		}
		pts = append(pts, p)
		start = p
	}
	return pts, true
}

// writeField appends a field's raw lines to dst, folding any line over
// MaxLine; it returns how many lines it folded.
func writeField(dst, raw []byte, name []byte, pts []int) ([]byte, int, error) {
	folded := 0
	for len(raw) > 0 {
		line, eol := raw, []byte(nil)
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i+1], raw[i+1:]
			eol = line[len(line)-1:]
			line = line[:len(line)-1]
			if len(line) > 0 && line[len(line)-1] == '\r' {
				eol = crlf
				line = line[:len(line)-1]
			}
		} else {
			raw = nil
		}
		if len(line) <= MaxLine {
			dst = append(dst, line...)
			dst = append(dst, eol...)
			continue
		}
		var ok bool
		pts, ok = foldPoints(line, foldMin(line), pts[:0])
		if !ok {
			return dst, folded, fmt.Errorf("conform: field %q: %d octets: %w", name, len(line), ErrUnfoldable)
		}
		prev := 0
		for _, p := range pts {
			dst = append(dst, line[prev:p]...)
			dst = append(dst, crlf...)
			prev = p
		}
		dst = append(dst, line[prev:]...)
		dst = append(dst, eol...)
		folded++
	}
	return dst, folded, nil
}

// HeaderNonASCII reports whether a header section has an octet ≥ 0x80, that
// is, whether it needs SMTPUTF8 (RFC 6532) as it is.
func HeaderNonASCII(h []byte) bool { return hasHigh(h) }

// Fields whose value is unstructured text (RFC 5322 §3.6.5, RFC 2045 §8),
// where RFC 2047 encoded-words may stand for non-ASCII text.
var unstructured = map[string]bool{"subject": true, "comments": true, "content-description": true}

// Address fields, whose display names may be encoded-words and whose domains
// may be A-labels; a non-ASCII local part has no ASCII form.
var addressFields = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "sender": true, "reply-to": true,
	"resent-from": true, "resent-to": true, "resent-cc": true, "resent-bcc": true, "resent-sender": true,
}

// DowngradeHeader returns a header section with its non-ASCII text made
// ASCII where that keeps its meaning (RFC 6530 downgrade, done the simple
// way): the values of Subject, Comments and Content-Description become
// RFC 2047 encoded-words, and in address fields display names become
// encoded-words and IDN domains A-labels. Fields that are ASCII are copied
// as they are. Anything else non-ASCII (a local part, another structured
// field, text that is not UTF-8) fails with ErrNeedsUTF8 naming the field;
// the caller then bounces with 5.6.7.
func DowngradeHeader(h []byte) ([]byte, error) {
	out := make([]byte, 0, len(h)+len(h)/2)
	var err error
	eachField(h, func(name, raw, value []byte) {
		if err != nil {
			return
		}
		if !hasHigh(raw) {
			out = append(out, raw...)
			return
		}
		lname := strings.ToLower(string(name))
		v := strings.TrimSpace(unfold(value))
		if !utf8.ValidString(v) {
			err = fmt.Errorf("conform: field %s is not UTF-8: %w", name, ErrNeedsUTF8)
			return
		}
		var nv string
		switch {
		case unstructured[lname]:
			nv = mime.QEncoding.Encode("utf-8", v)
		case addressFields[lname]:
			nv, err = downgradeAddresses(string(name), v)
		case lname == "received":
			nv, err = downgradeReceived(v)
		default:
			err = fmt.Errorf("conform: field %s has non-ASCII text: %w", name, ErrNeedsUTF8)
		}
		if err != nil {
			return
		}
		line := []byte(string(name) + ": " + nv)
		var pts []int
		pts, ok := foldPoints(line, len(name), pts)
		if !ok {
			err = fmt.Errorf("conform: field %s: %w", name, ErrUnfoldable)
			return
		}
		prev := 0
		for _, p := range pts {
			out = append(out, line[prev:p]...)
			out = append(out, crlf...)
			prev = p
		}
		out = append(out, line[prev:]...)
		out = append(out, crlf...)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// downgradeReceived makes a Received field ASCII as RFC 6857 3.1.9 does:
// each angle-bracketed path in it with a non-ASCII domain gets the domain's
// A-label; a path whose local part is not ASCII is dropped with what
// introduces it (the "for" clause, the "(envelope-from ...)" comment). A
// trace field must not make a message undeliverable: it only records.
func downgradeReceived(v string) (string, error) {
	var b strings.Builder
	for {
		lt := strings.IndexByte(v, '<')
		gt := strings.IndexByte(v[max(lt, 0):], '>')
		if lt < 0 || gt < 0 {
			b.WriteString(v)
			break
		}
		gt += lt
		before, path := v[:lt], v[lt+1:gt]
		v = v[gt+1:]
		if !hasHigh([]byte(path)) {
			b.WriteString(before)
			b.WriteString("<" + path + ">")
			continue
		}
		at := strings.LastIndexByte(path, '@')
		if at >= 0 && !hasHigh([]byte(path[:at])) {
			if ascii, err := idna.Lookup.ToASCII(path[at+1:]); err == nil {
				b.WriteString(before)
				b.WriteString("<" + path[:at] + "@" + ascii + ">")
				continue
			}
		}
		// Drop the path with its clause: "for <...>" or "(envelope-from <...>)".
		switch t := strings.TrimRight(before, " \t"); {
		case strings.HasSuffix(strings.ToLower(t), "for"):
			b.WriteString(strings.TrimRight(t[:len(t)-3], " \t"))
		case strings.HasSuffix(strings.ToLower(t), "(envelope-from"):
			b.WriteString(strings.TrimRight(t[:len(t)-len("(envelope-from")], " \t"))
			v = strings.TrimPrefix(v, ")")
		default:
			b.WriteString(before)
			b.WriteString("<>")
		}
	}
	out := b.String()
	if hasHigh([]byte(out)) {
		return "", fmt.Errorf("conform: field Received has non-ASCII text: %w", ErrNeedsUTF8)
	}
	return out, nil
}

func downgradeAddresses(field, v string) (string, error) {
	list, err := mail.ParseAddressList(v)
	if err != nil {
		return "", fmt.Errorf("conform: field %s: %v: %w", field, err, ErrNeedsUTF8)
	}
	parts := make([]string, 0, len(list))
	for _, a := range list {
		at := strings.LastIndexByte(a.Address, '@')
		if at < 0 {
			return "", fmt.Errorf("conform: field %s: address %q has no domain: %w", field, a.Address, ErrNeedsUTF8)
		}
		local, domain := a.Address[:at], a.Address[at+1:]
		if hasHigh([]byte(local)) {
			return "", fmt.Errorf("conform: field %s: local part %q is not ASCII: %w", field, local, ErrNeedsUTF8)
		}
		ascii, err := idna.Lookup.ToASCII(domain)
		if err != nil {
			return "", fmt.Errorf("conform: field %s: domain %q: %v: %w", field, domain, err, ErrNeedsUTF8)
		}
		// mail.Address.String writes a non-ASCII name as encoded-words and
		// quotes the local part when it must.
		parts = append(parts, (&mail.Address{Name: a.Name, Address: local + "@" + ascii}).String())
	}
	return strings.Join(parts, ", "), nil
}
