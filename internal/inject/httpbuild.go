package inject

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"net/netip"
	"net/textproto"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/conform"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/spool"
)

// httpRequest is the JSON body of POST /api/v1/messages.
type httpRequest struct {
	From          json.RawMessage   `json:"from"`
	Recipients    []json.RawMessage `json:"recipients"`
	Content       *string           `json:"content"`
	Subject       string            `json:"subject"`
	Text          string            `json:"text"`
	HTML          string            `json:"html"`
	Headers       map[string]string `json:"headers"`
	Attachments   []json.RawMessage `json:"attachments"` // each an httpAttachment, decoded in plan to name its index
	Substitutions map[string]string `json:"substitutions"`
	BindingGroup  string            `json:"binding_group"`
	Metadata      map[string]string `json:"metadata"`
}

type httpAttachment struct {
	Name        string `json:"name"`
	ContentType string `json:"content_type"`
	Data        string `json:"data"`
}

// httpAddr is an address given as a string or as an object.
type httpAddr struct {
	Email         string            `json:"email"`
	Name          string            `json:"name"`
	Substitutions map[string]string `json:"substitutions"`
}

func jsonContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// strictDecode decodes b into v refusing unknown fields and trailing data.
func strictDecode(r io.Reader, v any) error {
	d := json.NewDecoder(r)
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}

// jsonFieldError turns a decoding error into a 400 naming the field and
// saying, in the API's words rather than Go's types, what was wanted and
// what came.
func jsonFieldError(prefix string, err error) *httpError {
	var te *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &httpError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body over %d octets", mbe.Limit)}
	case errors.As(err, &te):
		f := te.Field
		if prefix != "" {
			f = strings.TrimSuffix(prefix+"."+f, ".")
		}
		if f == "" {
			f = "body"
		}
		got := jsonKind(te.Value)
		if te.Type.Kind() == reflect.String && mapFields[lastField(f)] != "" {
			// A map's value: encoding/json names the map, not the key.
			return badField(f, "%s: every value must be a string, got %s", f, got)
		}
		return badField(f, "%s: want %s, got %s", f, wantJSON(f, te.Type), got)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		if prefix != "" {
			name = prefix + "." + name
		}
		return badField(name, "unknown field %s", name)
	}
	f := prefix
	if f == "" {
		f = "body"
	}
	return badField(f, "%s: %v", f, err)
}

// mapFields are the request's objects of names to strings, by field name.
var mapFields = map[string]string{
	"headers":       "an object of header field names to strings",
	"substitutions": "an object of variable names to strings",
	"metadata":      "an object of keys to strings",
}

// lastField is the last name of a field path: "recipients[2].substitutions"
// is "substitutions".
func lastField(f string) string {
	if i := strings.LastIndexByte(f, '.'); i >= 0 {
		f = f[i+1:]
	}
	if i := strings.IndexByte(f, '['); i >= 0 {
		f = f[:i]
	}
	return f
}

// wantJSON says what field f takes, for a request whose f decoded into t.
func wantJSON(f string, t reflect.Type) string {
	switch t {
	case reflect.TypeFor[httpRequest]():
		return "a JSON object"
	case reflect.TypeFor[httpAddr]():
		if strings.HasPrefix(f, "recipients") {
			return `an address string or {"email","name","substitutions"}`
		}
		return `an address string or {"email","name"}`
	case reflect.TypeFor[httpAttachment]():
		return `an object {"name","content_type","data"}`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Map:
		if w := mapFields[lastField(f)]; w != "" {
			return w
		}
		return "an object"
	case reflect.Slice:
		switch lastField(f) {
		case "recipients":
			return "a list of addresses"
		case "attachments":
			return `a list of {"name","content_type","data"}`
		}
		return "a list"
	}
	return "another JSON type"
}

// jsonKind is encoding/json's name of a JSON value's kind as a user says it.
func jsonKind(v string) string {
	switch {
	case strings.HasPrefix(v, "number"):
		return "a number"
	case v == "string":
		return "a string"
	case v == "bool":
		return "true or false"
	case v == "array":
		return "a list"
	case v == "object":
		return "an object"
	}
	return v
}

func decodeAddr(field string, raw json.RawMessage) (httpAddr, *httpError) {
	var a httpAddr
	if len(raw) > 0 && raw[0] == '"' {
		if err := json.Unmarshal(raw, &a.Email); err != nil {
			return a, jsonFieldError(field, err)
		}
		if strings.ContainsRune(a.Email, '<') && !strings.ContainsAny(a.Email, "\r\n") {
			// "Name <addr>", as a From field is written: the name and
			// the address, as the object form gives them.
			pa, err := mail.ParseAddress(a.Email)
			if err != nil {
				return a, badField(field, "%s: %q is neither an address nor \"Name <address>\": %v", field, a.Email, err)
			}
			a.Email, a.Name = pa.Address, pa.Name
		}
	} else if err := strictDecode(bytes.NewReader(raw), &a); err != nil {
		return a, jsonFieldError(field, err)
	}
	if strings.ContainsAny(a.Email, "\r\n") {
		return a, badField(field+".email", "%s.email holds CR or LF", field)
	}
	if strings.ContainsAny(a.Name, "\r\n") {
		return a, badField(field+".name", "%s.name holds CR or LF", field)
	}
	for k := range a.Substitutions {
		if err := checkVarName(k); err != nil {
			return a, badField(field+".substitutions", "%s.substitutions: %v", field, err)
		}
	}
	return a, nil
}

// checkHTTPAddress parses a bare addr-spec as an SMTP client's path would
// be (net/mail: quoted local parts unquoted, one '@' outside quotes), then
// applies checkAddress, so both APIs accept the same addresses.
func checkHTTPAddress(addr string, kind addrKind) (string, *smtp.SMTPError) {
	a, err := mail.ParseAddress("<" + addr + ">")
	if err != nil || a.Name != "" {
		return checkAddress("", true, kind) // the syntax refusal
	}
	return checkAddress(a.Address, true, kind)
}

// decode reads and checks the request's shape (not yet its addresses).
func (h *HTTPServer) decode(w http.ResponseWriter, r *http.Request) (*httpRequest, *httpError) {
	// Base64 attachments take 4/3 of their size; each recipient may bring
	// its substitutions. The built message is held to MaxMessageSize.
	limit := h.opts.MaxMessageSize*4/3 + int64(h.opts.MaxRecipients)*1024 + 64<<10
	body := http.MaxBytesReader(w, r.Body, limit)
	var req httpRequest
	if err := strictDecode(body, &req); err != nil {
		return nil, jsonFieldError("", err)
	}
	return &req, nil
}

// draft is a request checked and its templates parsed.
type draft struct {
	from    httpAddr
	rcpts   []httpAddr // the valid, distinct ones, canonical
	fields  []string   // recipients[i], for error messages
	refused []HTTPRefusal
	utf8    bool
	content template // content mode
	raw     bool     // content given
	// addDate and addMessageID: content lacks the field, and build adds
	// it, as it writes it in a built message.
	addDate, addMessageID bool
	subject               template
	text                  template
	html                  template
	hdrNames              []string // sorted
	hdrs                  map[string]template
	atts                  []attachment
}

type attachment struct {
	name, ctype string
	data        []byte
}

// reservedHeaders are set from the request's own fields or by the MIME
// builder; setting them in headers would make two of them.
var reservedHeaders = map[string]string{
	"from": "from", "subject": "subject", "mime-version": "", "content-type": "", "content-transfer-encoding": "",
	"x-binding-group": "binding_group", "x-binding": "binding_group", "received": "",
}

// plan checks the request and parses its templates.
func (h *HTTPServer) plan(req *httpRequest) (*draft, *httpError) {
	d := &draft{}
	if len(req.From) == 0 || string(req.From) == "null" {
		return nil, badField("from", "from is required")
	}
	from, e := decodeAddr("from", req.From)
	if e != nil {
		return nil, e
	}
	canon, se := checkHTTPAddress(from.Email, senderAddr)
	if se != nil {
		return nil, badField("from", "from %s: %d %d.%d.%d %s", quote(from.Email), se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	from.Email = canon
	d.from = from
	d.utf8 = !isASCII(canon)

	if len(req.Recipients) == 0 {
		return nil, badField("recipients", "recipients: at least one is required")
	}
	if len(req.Recipients) > h.opts.MaxRecipients {
		return nil, badField("recipients", "recipients: %d, at most %d a request", len(req.Recipients), h.opts.MaxRecipients)
	}
	seen := make(map[string]bool, len(req.Recipients))
	for i, raw := range req.Recipients {
		f := fmt.Sprintf("recipients[%d]", i)
		a, e := decodeAddr(f, raw)
		if e != nil {
			return nil, e
		}
		c, se := checkHTTPAddress(a.Email, recipientAddr)
		if se == nil && !h.opts.AllowAddressLiterals && isAddressLiteral(c) {
			se = errLiteral // as RCPT TO refuses it
		}
		switch {
		case se != nil:
			d.refused = append(d.refused, HTTPRefusal{a.Email, fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)})
		case seen[strings.ToLower(c)]:
			d.refused = append(d.refused, HTTPRefusal{a.Email, "550 5.5.0 duplicate recipient in this request"})
		default:
			seen[strings.ToLower(c)] = true
			a.Email = c
			d.rcpts = append(d.rcpts, a)
			d.fields = append(d.fields, f)
			d.utf8 = d.utf8 || !isASCII(c)
		}
	}
	for k := range req.Substitutions {
		if err := checkVarName(k); err != nil {
			return nil, badField("substitutions", "substitutions: %v", err)
		}
	}
	for k, v := range req.Metadata {
		if len(k) > 256 || len(v) > 1024 {
			return nil, badField("metadata", "metadata %s: keys up to 256 octets, values up to 1024", quote(k))
		}
	}
	if req.BindingGroup != "" {
		if e := h.core.checkBinding(req.BindingGroup, ""); e != nil {
			return nil, badField("binding_group", "binding_group: %s", e.Message)
		}
	}
	var err error
	parse := func(field, src string) template {
		if err != nil {
			return nil
		}
		var t template
		if t, err = parseTemplate(src); err != nil {
			err = fmt.Errorf("%s: %w", field, err)
		}
		return t
	}
	built := req.Subject != "" || req.Text != "" || req.HTML != "" || len(req.Headers) > 0 || len(req.Attachments) > 0
	switch {
	case req.Content != nil && built:
		return nil, badField("content", "content excludes subject, text, html, headers and attachments")
	case req.Content != nil:
		if *req.Content == "" {
			return nil, badField("content", "content is empty")
		}
		d.raw = true
		d.content = parse("content", *req.Content)
		if err != nil {
			return nil, badField("content", "%v", err)
		}
		hs, e := checkContentHeader(*req.Content)
		if e != nil {
			return nil, e
		}
		d.addDate, d.addMessageID = !hs.date, !hs.messageID
		return d, nil
	case req.Text == "" && req.HTML == "" && len(req.Attachments) == 0:
		return nil, badField("text", "one of content, text, html or attachments is required")
	}
	if strings.ContainsAny(req.Subject, "\r\n") {
		return nil, badField("subject", "subject holds CR or LF")
	}
	d.subject = parse("subject", req.Subject)
	d.text = parse("text", req.Text)
	d.html = parse("html", req.HTML)
	if err != nil {
		return nil, badField(strings.SplitN(err.Error(), ":", 2)[0], "%v", err)
	}
	d.hdrs = make(map[string]template, len(req.Headers))
	for k, v := range req.Headers {
		f := "headers." + k
		if len(k) > 76 || !validFieldName([]byte(k)) {
			return nil, badField(f, "%s: not a header field name", f)
		}
		if use, ok := reservedHeaders[strings.ToLower(k)]; ok {
			if use != "" {
				return nil, badField(f, "%s: set it with the field %s", f, use)
			}
			return nil, badField(f, "%s: set by mtad", f)
		}
		if strings.ContainsAny(v, "\r\n") {
			return nil, badField(f, "%s holds CR or LF", f)
		}
		if d.hdrs[k] = parse(f, v); err != nil {
			return nil, badField(f, "%v", err)
		}
		d.hdrNames = append(d.hdrNames, k)
	}
	sort.Strings(d.hdrNames)
	for i, raw := range req.Attachments {
		f := fmt.Sprintf("attachments[%d]", i)
		var a httpAttachment
		if err := strictDecode(bytes.NewReader(raw), &a); err != nil {
			return nil, jsonFieldError(f, err)
		}
		if a.Name == "" || strings.ContainsAny(a.Name, "\r\n\"") {
			return nil, badField(f+".name", "%s.name: required, without CR, LF or '\"'", f)
		}
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		if _, _, err := mime.ParseMediaType(ct); err != nil || strings.ContainsAny(ct, "\r\n") {
			return nil, badField(f+".content_type", "%s.content_type %s: not a media type", f, quote(ct))
		}
		data, err := base64.StdEncoding.DecodeString(a.Data)
		if err != nil {
			return nil, badField(f+".data", "%s.data: not base64: %v", f, err)
		}
		d.atts = append(d.atts, attachment{a.Name, ct, data})
	}
	return d, nil
}

// contentFields is what checkContentHeader found in content's header
// section.
type contentFields struct{ date, messageID bool }

// checkContentHeader reads the header section of a request's content (the
// template's source: field names hold no variables) and refuses what is
// not a message: no header section at all (a body alone), a line in it
// that is neither a field, a folded continuation nor the empty line that
// ends it, or no From field. RFC 5322 3.6 requires From and Date; Date,
// like Message-ID, is added when missing (build), as the request's
// builder path writes both, while a missing From is the client's to fix,
// since mtad cannot know whom the message is from in the reader's eyes.
func checkContentHeader(src string) (contentFields, *httpError) {
	var cf contentFields
	var from, fields int
	for n, rest := 1, src; rest != ""; n++ {
		line, after, _ := strings.Cut(rest, "\n")
		rest = after
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break // the end of the header section
		}
		if line[0] == ' ' || line[0] == '\t' {
			if fields == 0 {
				return cf, badField("content", "content line 1: starts with white space: a message starts with a header field (RFC 5322 2.2)")
			}
			continue
		}
		name, _, ok := strings.Cut(line, ":")
		name = strings.TrimRight(name, " \t")
		if !ok || !validFieldName([]byte(name)) {
			if fields == 0 {
				return cf, badField("content", "content has no header section: a message starts with header fields (From and Date at least, RFC 5322 3.6), then an empty line, then the body")
			}
			return cf, badField("content", "content line %d: neither a header field (\"Name: value\") nor the empty line that ends the header section", n)
		}
		fields++
		switch strings.ToLower(name) {
		case "from":
			from++
		case "date":
			cf.date = true
		case "message-id":
			cf.messageID = true
		}
	}
	switch {
	case fields == 0:
		return cf, badField("content", "content has no header section: a message starts with header fields (From and Date at least, RFC 5322 3.6), then an empty line, then the body")
	case from == 0:
		return cf, badField("content", "content has no From field (RFC 5322 3.6 requires one; Date and Message-ID are added when missing)")
	}
	return cf, nil
}

// hasVars says whether any template uses a variable.
func (d *draft) hasVars() bool {
	if d.content.hasVars() || d.subject.hasVars() || d.text.hasVars() || d.html.hasVars() {
		return true
	}
	for _, t := range d.hdrs {
		if t.hasVars() {
			return true
		}
	}
	return false
}

// rendered is one message's content before MIME assembly.
type rendered struct {
	content, subject, text, html string
	hdrs                         []string // values, in hdrNames order
	rcpts                        []int    // indexes into draft.rcpts
}

func (r *rendered) key() string {
	var b strings.Builder
	for _, s := range append([]string{r.content, r.subject, r.text, r.html}, r.hdrs...) {
		fmt.Fprintf(&b, "%d:%s", len(s), s)
	}
	return b.String()
}

// render renders the draft for each recipient and groups recipients by
// identical result: one message per distinct content.
func (d *draft) render(global map[string]string) ([]*rendered, *httpError) {
	one := func(vars func(string) string) *rendered {
		r := &rendered{
			content: d.content.render(vars, false),
			subject: d.subject.render(vars, false),
			text:    d.text.render(vars, false),
			html:    d.html.render(vars, true),
		}
		for _, n := range d.hdrNames {
			r.hdrs = append(r.hdrs, d.hdrs[n].render(vars, false))
		}
		return r
	}
	all := make([]int, len(d.rcpts))
	for i := range all {
		all[i] = i
	}
	if !d.hasVars() {
		r := one(func(string) string { return "" })
		r.rcpts = all
		return []*rendered{r}, nil
	}
	var out []*rendered
	byKey := map[string]*rendered{}
	for i, a := range d.rcpts {
		r := one(func(n string) string {
			if v, ok := a.Substitutions[n]; ok {
				return v
			}
			return global[n]
		})
		// A substituted value may not smuggle a line end into a header.
		if strings.ContainsAny(r.subject, "\r\n") {
			return nil, badField("subject", "subject holds CR or LF after substitution for %s", d.fields[i])
		}
		for j, v := range r.hdrs {
			if strings.ContainsAny(v, "\r\n") {
				return nil, badField("headers."+d.hdrNames[j], "headers.%s holds CR or LF after substitution for %s", d.hdrNames[j], d.fields[i])
			}
		}
		k := r.key()
		if g, ok := byKey[k]; ok {
			g.rcpts = append(g.rcpts, i)
			continue
		}
		r.rcpts = []int{i}
		byKey[k] = r
		out = append(out, r)
	}
	return out, nil
}

// build assembles the RFC 5322 message of r (LF or CRLF line ends; the
// scanner makes them CRLF).
func (d *draft) build(r *rendered, id, host string, now time.Time) []byte {
	if d.raw {
		if !d.addDate && !d.addMessageID {
			return []byte(r.content)
		}
		var b bytes.Buffer
		if d.addDate {
			b.WriteString("Date: " + now.Format(time.RFC1123Z) + "\r\n")
		}
		if d.addMessageID {
			b.WriteString("Message-ID: <" + id + "@" + host + ">\r\n")
		}
		b.WriteString(r.content)
		return b.Bytes()
	}
	var b bytes.Buffer
	hdr := func(name, value string) {
		b.WriteString(name)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteString("\r\n")
	}
	hdr("From", (&mail.Address{Name: d.from.Name, Address: d.from.Email}).String())
	set := map[string]bool{}
	for _, n := range d.hdrNames {
		set[strings.ToLower(n)] = true
	}
	if !set["to"] {
		if len(r.rcpts) == 1 {
			a := d.rcpts[r.rcpts[0]]
			hdr("To", (&mail.Address{Name: a.Name, Address: a.Email}).String())
		} else {
			// Naming every recipient would show each the others.
			hdr("To", "undisclosed-recipients:;")
		}
	}
	if r.subject != "" {
		hdr("Subject", mime.QEncoding.Encode("utf-8", r.subject))
	}
	if !set["date"] {
		hdr("Date", now.Format(time.RFC1123Z))
	}
	if !set["message-id"] {
		hdr("Message-ID", "<"+id+"@"+host+">")
	}
	for i, n := range d.hdrNames {
		hdr(textproto.CanonicalMIMEHeaderKey(n), mime.QEncoding.Encode("utf-8", r.hdrs[i]))
	}
	hdr("MIME-Version", "1.0")

	textPart := func(w io.Writer, s string) {
		qp := quotedprintable.NewWriter(w)
		_, _ = qp.Write([]byte(s))
		_ = qp.Close()
	}
	textHdr := func(ct string) textproto.MIMEHeader {
		return textproto.MIMEHeader{"Content-Type": {ct + "; charset=utf-8"}, "Content-Transfer-Encoding": {"quoted-printable"}}
	}
	// body writes the text/html alternative (or the one that is there)
	// under header h, into w.
	writeAlt := func(top bool, w io.Writer, header func(textproto.MIMEHeader) io.Writer) {
		switch {
		case r.text != "" && r.html != "":
			boundary := multipart.NewWriter(io.Discard).Boundary()
			pw := header(textproto.MIMEHeader{"Content-Type": {"multipart/alternative; boundary=" + boundary}})
			mw := multipart.NewWriter(pw)
			_ = mw.SetBoundary(boundary)
			p, _ := mw.CreatePart(textHdr("text/plain"))
			textPart(p, r.text)
			p, _ = mw.CreatePart(textHdr("text/html"))
			textPart(p, r.html)
			_ = mw.Close()
		case r.html != "":
			textPart(header(textHdr("text/html")), r.html)
		case r.text != "" || top:
			textPart(header(textHdr("text/plain")), r.text)
		}
	}
	topHeader := func(h textproto.MIMEHeader) io.Writer {
		for _, k := range []string{"Content-Type", "Content-Transfer-Encoding"} {
			if v := h.Get(k); v != "" {
				hdr(k, v)
			}
		}
		b.WriteString("\r\n")
		return &b
	}
	if len(d.atts) == 0 {
		writeAlt(true, &b, topHeader)
		return b.Bytes()
	}
	mixed := multipart.NewWriter(&b)
	hdr("Content-Type", "multipart/mixed; boundary="+mixed.Boundary())
	b.WriteString("\r\n")
	writeAlt(false, &b, func(h textproto.MIMEHeader) io.Writer {
		p, _ := mixed.CreatePart(h)
		return p
	})
	for _, a := range d.atts {
		p, _ := mixed.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {mime.FormatMediaType(a.ctype, map[string]string{"name": a.name})},
			"Content-Disposition":       {mime.FormatMediaType("attachment", map[string]string{"filename": a.name})},
			"Content-Transfer-Encoding": {"base64"},
		})
		enc := base64.StdEncoding.EncodeToString(a.data)
		for len(enc) > 76 {
			_, _ = io.WriteString(p, enc[:76]+"\r\n")
			enc = enc[76:]
		}
		_, _ = io.WriteString(p, enc+"\r\n")
	}
	_ = mixed.Close()
	return b.Bytes()
}

// storeAll renders, builds and stores every message of the request, a
// bounded number at a time (each PutBody waits for a group-committed
// fsync, so concurrent puts share syncs), and says what happened.
// who is the name of the bearer token, "" without tokens.
func (h *HTTPServer) storeAll(r *http.Request, who string, req *httpRequest, d *draft) (*HTTPResult, *httpError) {
	res := &HTTPResult{Refused: d.refused, IDs: []string{}}
	if res.Refused == nil {
		res.Refused = []HTTPRefusal{}
	}
	if len(d.rcpts) == 0 {
		return res, nil
	}
	msgs, e := d.render(req.Substitutions)
	if e != nil {
		return nil, e
	}
	ip, _ := netip.ParseAddrPort(r.RemoteAddr)
	ti := traceInfo{helo: "", ip: ip.Addr().Unmap(), host: h.core.traceHost, tls: r.TLS != nil, auth: who != "", utf8: d.utf8}
	type outcome struct {
		id string
		e  *httpError
	}
	outs := make([]outcome, len(msgs))
	const workers = 16
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for i, m := range msgs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id, e := h.storeOne(d, m, req, ti, who)
			outs[i] = outcome{id, e}
		}()
	}
	wg.Wait()
	var first *httpError
	for i, o := range outs {
		if o.e == nil {
			res.IDs = append(res.IDs, o.id)
			res.Accepted += len(msgs[i].rcpts)
			continue
		}
		if first == nil {
			first = o.e
		}
		for _, k := range msgs[i].rcpts {
			res.Refused = append(res.Refused, HTTPRefusal{d.rcpts[k].Email, o.e.reason()})
		}
	}
	if res.Accepted == 0 && first != nil {
		return nil, first
	}
	return res, nil
}

// reason is an httpError as a refusal reason in a 202 answer.
func (e *httpError) reason() string {
	if e.status >= 500 {
		return "451 4.3.0 " + e.msg
	}
	if e.status == http.StatusRequestEntityTooLarge {
		return "552 5.3.4 " + e.msg
	}
	return "550 5.6.0 " + e.msg
}

// storeOne takes one rendered message through the SMTP path's content
// rules (scanner, header parsing, conformance, DKIM) into the spool.
// who, the token's name, is the message's AuthUser, as the SMTP AUTH
// user is an SMTP message's: the "received" record says who injected.
func (h *HTTPServer) storeOne(d *draft, r *rendered, req *httpRequest, ti traceInfo, who string) (string, *httpError) {
	s := h.core
	id := s.store.NewID()
	now := time.Now()
	data := d.build(r, id, strings.TrimSpace(s.opts.Hostname), now)
	rcpts := make([]string, len(r.rcpts))
	for i, k := range r.rcpts {
		rcpts[i] = d.rcpts[k].Email
	}
	ti.id, ti.from, ti.rcpts, ti.date = id, d.from.Email, rcpts, now
	mw := &msgWriter{srv: s, id: id, date: now, body: s.store.NewBody()}
	var tb [512]byte
	_, mw.werr = mw.body.Write(appendHTTPReceived(tb[:0], ti))
	mw.hdr = s.getHdrBuf()
	sc := newDataScanner(false)
	sc.scan(data, mw)
	mw.checkSize(sc.in)
	sc.finish(mw)
	mw.endHeaders()
	field := "content"
	if !d.raw {
		field = "text"
	}
	switch {
	case mw.tooBig:
		mw.abort()
		return "", &httpError{status: http.StatusRequestEntityTooLarge, field: field, msg: fmt.Sprintf("message over %d octets", s.opts.MaxMessageSize)}
	case sc.nul:
		mw.abort()
		return "", badField(field, "%s holds a NUL octet", field)
	case mw.herr != nil:
		mw.abort()
		return "", badField(field, "%s: %s", field, mw.herr.Message)
	case sc.long && s.opts.LongLines == LongLinesReject:
		mw.abort()
		return "", badField(field, "%s: a line over 998 octets", field)
	case mw.werr != nil:
		mw.abort()
		return "", h.storeFailure("writing message body", mw.werr)
	}
	group := mw.h.group
	if req.BindingGroup != "" {
		if group != "" && group != req.BindingGroup {
			mw.abort()
			return "", badField("binding_group", "binding_group %s conflicts with X-Binding-Group %s in content", quote(req.BindingGroup), quote(group))
		}
		group = req.BindingGroup
	}
	body := mw.body
	eightBit := bytes.IndexFunc(data, func(c rune) bool { return c >= 0x80 }) >= 0
	conv := func(opts conform.Options) *httpError {
		nb, err := conformBody(s.store, body, opts)
		if err != nil {
			body.Abort()
			var ce *conform.Error
			if errors.As(err, &ce) {
				return badField(field, "%s: %s", field, ce.SMTPError().Message)
			}
			return h.storeFailure("making a message conformant", err)
		}
		body = nb
		return nil
	}
	if sc.long {
		if e := conv(conform.Options{}); e != nil {
			return "", e
		}
	}
	if eightBit && s.opts.DKIM.Active() {
		// As for SMTP: signed 8-bit content would break where delivery
		// converts it to 7 bits, so it is made 7-bit before signing.
		if e := conv(conform.Options{To7Bit: true}); e != nil {
			return "", e
		}
		eightBit = false
	}
	body, sig, err := s.opts.DKIM.SignBody(s.store, body)
	if err != nil {
		body.Abort()
		return "", h.storeFailure("DKIM signing", err)
	}
	m := &spool.Message{
		ID:         id,
		Sender:     d.from.Email,
		Recipients: make([]spool.Recipient, len(rcpts)),
		Received:   now,
		ClientIP:   ipString(ti.ip),
		AuthUser:   who,
		MessageID:  mw.h.messageID,
		Group:      group,
		Binding:    mw.h.binding,
		SMTPUTF8:   d.utf8,
		EightBit:   eightBit,
	}
	for i, a := range rcpts {
		m.Recipients[i] = spool.Recipient{Addr: a, State: spool.Pending}
	}
	if err := s.store.PutBody(m, body); err != nil {
		body.Abort()
		return "", h.storeFailure("storing message", err)
	}
	logging.Received{
		QueueID:      m.ID,
		MessageID:    m.MessageID,
		Sender:       m.Sender,
		Recipients:   rcpts,
		Size:         m.Size,
		ClientIP:     m.ClientIP,
		AuthUser:     m.AuthUser,
		DKIM:         sig.Signatures,
		DKIMUnsigned: sig.Unsigned,
		Metadata:     req.Metadata,
	}.Log(h.log)
	if h.handoff != nil {
		h.handoff.Submit(m)
	}
	return m.ID, nil
}

// storeFailure is a local failure: always 503, the client retries.
func (h *HTTPServer) storeFailure(what string, err error) *httpError {
	msg := "local storage error; retry later"
	if errors.Is(err, spool.ErrNoSpace) {
		// The spool logs its low-space state once as it changes.
		msg = "spool full; retry later"
	} else {
		h.log.Error("inject http: "+what, zap.Error(err))
	}
	return &httpError{status: http.StatusServiceUnavailable, msg: msg}
}

// appendHTTPReceived is appendReceived for a message that came over HTTP:
// there is no HELO, and the protocol is HTTP or HTTPS.
func appendHTTPReceived(dst []byte, t traceInfo) []byte {
	dst = append(dst, "Received: from unknown ("...)
	dst = append(dst, "unknown"...)
	if t.ip.IsValid() {
		dst = append(dst, " ["...)
		if t.ip.Is6() {
			dst = append(dst, "IPv6:"...)
		}
		dst = t.ip.AppendTo(dst)
		dst = append(dst, ']')
	}
	dst = append(dst, ")\r\n\tby "...)
	dst = appendTraceToken(dst, t.host)
	dst = append(dst, " (mtad) with HTTP"...)
	if t.tls {
		dst = append(dst, 'S')
	}
	dst = append(dst, " id "...)
	dst = appendTraceToken(dst, t.id)
	dst = append(dst, "\r\n\t(envelope-from <"...)
	dst = appendTraceAddr(dst, t.from, t.utf8, true)
	dst = append(dst, ">)"...)
	if len(t.rcpts) == 1 {
		dst = append(dst, " for <"...)
		dst = appendTraceAddr(dst, t.rcpts[0], t.utf8, false)
		dst = append(dst, '>')
	}
	dst = append(dst, ";\r\n\t"...)
	dst = t.date.AppendFormat(dst, time.RFC1123Z)
	return append(dst, "\r\n"...)
}
