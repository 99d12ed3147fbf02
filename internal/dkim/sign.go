package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"golang.org/x/net/idna"

	"github.com/mtad/mtad/internal/spool"
)

// maxHeaderSection bounds the header section held while signing: the
// signer needs the whole section (to pick the From field and the fields
// of h=) before the body streams through. 1 MiB is far past any real
// header section; a message with a longer one goes unsigned, with that
// reason.
const maxHeaderSection = 1 << 20

// Result is what signing did to one message.
type Result struct {
	// Header holds the DKIM-Signature fields to put in front of the
	// message, each ending in CRLF; nil when nothing was signed.
	Header []byte
	// Signatures names each signature: "d=example.com s=s2026 a=rsa-sha256".
	Signatures []string
	// Unsigned says why the message was not signed ("no key for
	// example.org"); "" when it was, or when no keys are configured.
	Unsigned string
}

// Signer signs with the current key set. It is safe for concurrent use.
type Signer struct {
	keys atomic.Pointer[Keys]
	now  func() time.Time
}

// NewSigner returns a Signer with keys (nil = none).
func NewSigner(keys *Keys) *Signer {
	s := &Signer{now: time.Now}
	s.keys.Store(keys)
	return s
}

// SetKeys replaces the key set; signings under way finish with the old one.
func (s *Signer) SetKeys(keys *Keys) { s.keys.Store(keys) }

// Active reports whether any key is configured (a nil Signer has none).
func (s *Signer) Active() bool { return s != nil && s.keys.Load().Len() > 0 }

// Keys returns the current key set.
func (s *Signer) Keys() *Keys { return s.keys.Load() }

// BodyStore makes spool bodies; *spool.Spool satisfies it.
type BodyStore interface {
	NewBody() *spool.BodyWriter
}

// copyBufs are SignBody's copy buffers: one spool chunk read at a time
// goes through one of these.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// SignBody signs the message written to body. When it signs, it returns a
// new body holding the DKIM-Signature fields followed by the message, read
// back from the old body a chunk at a time, and aborts the old one; else it
// returns body itself. With no keys configured it returns at once, reading
// nothing. An error is the spool's (a read or write failure): the caller
// still owns (and should abort) body.
func (s *Signer) SignBody(store BodyStore, body *spool.BodyWriter) (*spool.BodyWriter, Result, error) {
	if s == nil || s.keys.Load().Len() == 0 {
		return body, Result{}, nil
	}
	r, err := body.Reader()
	if err != nil {
		return nil, Result{}, fmt.Errorf("dkim: reading the body back: %w", err)
	}
	res, err := s.Sign(r)
	_ = r.Close()
	if err != nil || res.Header == nil {
		return body, res, err
	}
	out := store.NewBody()
	if _, err := out.Write(res.Header); err != nil {
		out.Abort()
		return nil, Result{}, fmt.Errorf("dkim: writing the signed body: %w", err)
	}
	if r, err = body.Reader(); err != nil {
		out.Abort()
		return nil, Result{}, fmt.Errorf("dkim: reading the body back: %w", err)
	}
	buf := copyBufs.Get().(*[]byte)
	_, err = io.CopyBuffer(out, r, *buf)
	copyBufs.Put(buf)
	_ = r.Close()
	if err != nil {
		out.Abort()
		return nil, Result{}, fmt.Errorf("dkim: copying the body behind its signatures: %w", err)
	}
	body.Abort()
	return out, res, nil
}

// Sign reads a message (CRLF line ends, as the injector stores it) and
// returns its signatures. A message that cannot be signed (no From, a From
// that does not parse, no key for its domain) gives a Result saying why
// and no error, and so does a signing failure (the same on every retry);
// an error is a failure to read the message.
func (s *Signer) Sign(r io.Reader) (Result, error) {
	keys := s.keys.Load()
	if keys.Len() == 0 {
		return Result{}, nil
	}
	src := &srcReader{r: r}
	br := bufio.NewReaderSize(src, 16<<10)
	var hdr bytes.Buffer
	from, present, why, err := readHeader(br, &hdr)
	if err != nil {
		return Result{}, fmt.Errorf("dkim: reading the header: %w", err)
	}
	if why != "" {
		return Result{Unsigned: why}, nil
	}
	domain, why := fromDomain(from)
	if why != "" {
		return Result{Unsigned: why}, nil
	}
	matched := keys.Match(domain)
	if len(matched) == 0 {
		return Result{Unsigned: "no key for " + domain}, nil
	}

	now := s.now()
	signers := make([]*dkim.Signer, 0, len(matched))
	ws := make([]io.Writer, 0, len(matched))
	// Every signer runs a goroutine until closed: close them all,
	// whatever happens.
	closed := false
	defer func() {
		if !closed {
			for _, sg := range signers {
				_ = sg.Close()
			}
		}
	}()
	for _, k := range matched {
		opts := &dkim.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.signer,
			HeaderCanonicalization: k.headerCan,
			BodyCanonicalization:   k.bodyCan,
			HeaderKeys:             k.headerList(present),
		}
		if k.expiry > 0 {
			opts.Expiration = now.Add(k.expiry)
		}
		sg, err := dkim.NewSigner(opts)
		if err != nil {
			return Result{}, fmt.Errorf("dkim: %s (%s): %w", k.configName, k, err)
		}
		signers = append(signers, sg)
		ws = append(ws, sg)
	}
	w := io.MultiWriter(ws...)
	_, err = w.Write(hdr.Bytes())
	if err == nil {
		_, err = br.WriteTo(w)
	}
	if src.err != nil {
		return Result{}, fmt.Errorf("dkim: reading the message: %w", src.err)
	}
	if err != nil {
		// A signer refused the message (go-msgauth could not read its
		// header section): the message is the same whenever it is
		// retried, so it goes unsigned, saying why, rather than be
		// refused with a 4xx it would get again.
		return Result{Unsigned: "signing failed: " + err.Error()}, nil
	}
	closed = true
	var errs []error
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", matched[i].configName, matched[i], err))
		}
	}
	if len(errs) > 0 {
		// As above: the whole message was read, so the fault is the
		// message's or the key's, and a retry would meet it again.
		return Result{Unsigned: "signing failed: " + errors.Join(errs...).Error()}, nil
	}
	res := Result{Signatures: make([]string, len(matched))}
	for i, sg := range signers {
		res.Header = append(res.Header, sg.Signature()...) // ends in CRLF
		res.Signatures[i] = matched[i].String()
	}
	return res, nil
}

// srcReader keeps the source's read error apart from the signers' errors.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// headerList is the h= list for a message whose header section has the
// fields named (lower case) in present.
func (k *Key) headerList(present map[string]bool) []string {
	if k.headers != nil {
		return k.headers
	}
	out := make([]string, 0, len(DefaultHeaders))
	for i, h := range DefaultHeaders {
		if present[strings.ToLower(h)] || (i == 1 && h == "From") {
			out = append(out, h)
		}
	}
	return out
}

// readHeader copies the header section, up to and including the empty line
// that ends it, from br into hdr. It returns the unfolded values of the
// From fields and the names of the fields present (lower case), or why the
// message cannot be signed.
func readHeader(br *bufio.Reader, hdr *bytes.Buffer) (from []string, present map[string]bool, why string, err error) {
	present = map[string]bool{}
	var field []byte // the field being read, unfolded
	flush := func() {
		if len(field) == 0 {
			return
		}
		name, value, ok := bytes.Cut(field, []byte(":"))
		if ok {
			n := strings.ToLower(string(bytes.TrimRight(name, " \t")))
			present[n] = true
			if n == "from" {
				from = append(from, string(value))
			}
		}
		field = field[:0]
	}
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: the header is no use to
			// sign, and injection made lines conformant (≤ 998 octets).
			return nil, nil, "a header line over 16 KiB", nil
		}
		if err == io.EOF {
			return nil, nil, "no empty line ends the header section", nil
		}
		if err != nil {
			return nil, nil, "", err
		}
		if hdr.Len()+len(line) > maxHeaderSection {
			return nil, nil, "a header section over 1 MiB", nil
		}
		hdr.Write(line)
		content := bytes.TrimRight(line, "\r\n")
		switch {
		case len(content) == 0:
			flush()
			return from, present, "", nil
		case content[0] == ' ' || content[0] == '\t':
			field = append(field, content...)
		default:
			flush()
			field = append(field, content...)
		}
	}
}

// fromDomain returns the A-label domain of the From field's first address
// (RFC 6376 signs for the author; DMARC aligns d= with this domain), or why
// there is none.
func fromDomain(from []string) (string, string) {
	switch len(from) {
	case 0:
		return "", "no From field"
	case 1:
	default:
		return "", strconv.Itoa(len(from)) + " From fields"
	}
	addrs, err := mail.ParseAddressList(strings.TrimSpace(from[0]))
	if err != nil || len(addrs) == 0 {
		return "", "From does not parse: " + trim(from[0])
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", "From has no domain: " + trim(from[0])
	}
	d, err := idna.Lookup.ToASCII(strings.ToLower(strings.TrimSuffix(addrs[0].Address[at+1:], ".")))
	if err != nil || d == "" {
		return "", "From domain is not a domain name: " + trim(from[0])
	}
	return d, ""
}

// trim bounds a header value quoted in a reason, which goes to the log.
func trim(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return strconv.Quote(s)
}
