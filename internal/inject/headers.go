package inject

import (
	"bytes"
	"fmt"
	"strings"
)

// Header fields the injector reads. The two binding fields are requests to
// mtad, not part of the message: they are removed before it is stored.
const (
	hdrMessageID    = "message-id"
	hdrBindingGroup = "x-binding-group"
	hdrBinding      = "x-binding"
	hdrReceived     = "received"
)

// maxHeaderValue bounds a value kept from a header field; RFC 5322 lines
// are at most 998 octets, and longer values are no use in a log.
const maxHeaderValue = 998

// headerInfo is what parseHeaders found in the header section.
type headerInfo struct {
	messageID string
	group     string
	binding   string
	// received counts the Received fields (loop detection).
	received int
	// drop are the [start, end) byte ranges of the fields to remove,
	// folded continuation lines included, in order.
	drop [][2]int
}

// parseHeaders scans the header section of body: the lines up to the first
// empty line. A line that is neither a field ("name: value", name of
// printable ASCII without ':') nor a continuation (starts with SP or HTAB)
// ends the section early, and what follows is body, never looked at.
// Work is linear in the header section and nothing is copied but the three
// values kept. Two X-Binding-Group (or X-Binding) fields with different
// values are an error, since either choice would surprise someone.
func parseHeaders(body []byte) (headerInfo, error) {
	var h headerInfo
	var seenGroup, seenBinding bool
	// The field being read: its start, where its value starts, its end.
	start, valueStart, end := -1, 0, 0
	var name []byte
	finish := func() error {
		if start < 0 {
			return nil
		}
		n := string(name)
		switch {
		case strings.EqualFold(n, hdrReceived):
			h.received++
		case strings.EqualFold(n, hdrMessageID):
			if h.messageID == "" {
				h.messageID = headerValue(body[valueStart:end])
			}
		case strings.EqualFold(n, hdrBindingGroup):
			v := headerValue(body[valueStart:end])
			if seenGroup && v != h.group {
				return conflictError{"X-Binding-Group", h.group, v}
			}
			seenGroup, h.group = true, v
			h.drop = append(h.drop, [2]int{start, end})
		case strings.EqualFold(n, hdrBinding):
			v := headerValue(body[valueStart:end])
			if seenBinding && v != h.binding {
				return conflictError{"X-Binding", h.binding, v}
			}
			seenBinding, h.binding = true, v
			h.drop = append(h.drop, [2]int{start, end})
		}
		start = -1
		return nil
	}

	for pos := 0; pos < len(body); {
		lineEnd := len(body)
		if i := bytes.IndexByte(body[pos:], '\n'); i >= 0 {
			lineEnd = pos + i + 1
		}
		line := bytes.TrimRight(body[pos:lineEnd], "\r\n")
		if len(line) == 0 {
			break // the empty line that ends the header section
		}
		if line[0] == ' ' || line[0] == '\t' {
			if start < 0 {
				break // a continuation of nothing: not a header section
			}
			end = lineEnd
			pos = lineEnd
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 || !validFieldName(bytes.TrimRight(line[:colon], " \t")) {
			break
		}
		if err := finish(); err != nil {
			return headerInfo{}, err
		}
		start, valueStart, end = pos, pos+colon+1, lineEnd
		name = bytes.TrimRight(line[:colon], " \t")
		pos = lineEnd
	}
	if err := finish(); err != nil {
		return headerInfo{}, err
	}
	return h, nil
}

// conflictError is two fields of the same name with different values.
type conflictError struct{ field, a, b string }

func (e conflictError) Error() string {
	return fmt.Sprintf("conflicting %s headers %s and %s", e.field, quote(e.a), quote(e.b))
}

// Reply is the text for the SMTP refusal.
func (e conflictError) Reply() string {
	return fmt.Sprintf("Conflicting %s headers %s and %s", e.field, quote(e.a), quote(e.b))
}

// validFieldName reports whether n is an RFC 5322 field name: one or more
// printable US-ASCII characters other than ':'.
func validFieldName(n []byte) bool {
	if len(n) == 0 {
		return false
	}
	for _, c := range n {
		if c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// headerValue unfolds a raw field value and trims it, keeping at most
// maxHeaderValue bytes.
func headerValue(raw []byte) string {
	var b strings.Builder
	for _, c := range raw {
		if c == '\r' || c == '\n' {
			continue
		}
		if b.Len() >= maxHeaderValue+2 { // +2: room for the trim below
			break
		}
		b.WriteByte(c)
	}
	v := strings.TrimSpace(b.String())
	if len(v) > maxHeaderValue {
		v = v[:maxHeaderValue]
	}
	return v
}

// strip removes the fields in h.drop from body, in place, and returns the
// shortened body.
func (h headerInfo) strip(body []byte) []byte {
	if len(h.drop) == 0 {
		return body
	}
	out := body[:h.drop[0][0]]
	for i, d := range h.drop {
		next := len(body)
		if i+1 < len(h.drop) {
			next = h.drop[i+1][0]
		}
		out = append(out, body[d[1]:next]...)
	}
	return out
}
