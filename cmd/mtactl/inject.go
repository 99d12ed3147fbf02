package main

// mtactl inject: test mail into the daemon's injection listeners, the way
// a client application would send it: SMTP (one message, or every .eml of
// a directory over several connections) or HTTP (a JSON Lines file of
// injection requests). It is a client like any other: what the daemon
// refuses is reported with its reply, never retried.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// injectOpts are inject's flags.
type injectOpts struct {
	smtpAddr, httpAddr   string
	from, subject        string
	to                   []string
	user, passwordFile   string
	noTLS, tlsSkipVerify bool
	dir, jsonl           string
	httpToken            string
	concurrency          int
	password             string // read from passwordFile
}

// tally counts what the daemon took and refused, and why, and the queue
// ids it gave; safe for the workers to share.
type tally struct {
	mu                sync.Mutex
	accepted, refused int
	refusals          []refusal
	ids               []string
}

// refusal is why a recipient (or a whole source, Recipient "") was not
// taken; Source is the file, "line N", or "message" for the one
// generated message.
type refusal struct {
	Recipient string `json:"recipient"`
	Reason    string `json:"reason"`
	Source    string `json:"source,omitempty"`
}

// String is the refusal as "refused:" prints it.
func (r refusal) String() string {
	var parts []string
	if r.Source != "" {
		parts = append(parts, r.Source)
	}
	if r.Recipient != "" {
		parts = append(parts, "<"+r.Recipient+">")
	}
	return strings.Join(append(parts, r.Reason), ": ")
}

func (t *tally) add(accepted, refused int, refusals ...refusal) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.accepted += accepted
	t.refused += refused
	t.refusals = append(t.refusals, refusals...)
}

func (t *tally) queued(ids ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ids = append(t.ids, ids...)
}

func (a *app) injectCmd() *cobra.Command {
	var o injectOpts
	cmd := &cobra.Command{
		Use:   "inject (--to ADDR [--from ADDR] [--subject S] | --dir DIR | --jsonl FILE)",
		Short: "send test mail to the injection listeners (SMTP, or HTTP with --jsonl)",
		Long: `Send test mail the way a client would:
  --to ADDR [--from ADDR] [--subject S]   one generated message over SMTP; prints its queue id
  --dir DIR                               every *.eml in DIR over SMTP, --concurrency connections;
                                          envelope from --from or the From header, recipients
                                          from --to or To/Cc/Bcc (Bcc is not sent on)
  --jsonl FILE                            each line POSTed as an HTTP injection request to --http
The counts are recipients: "accepted N, refused M", then each refusal's
reply; exit 1 if any was refused. STARTTLS is used when offered (--no-tls:
never); AUTH PLAIN with --user and --password-file.`,
		Args: nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			var to []string
			for _, v := range o.to {
				for _, r := range strings.Split(v, ",") {
					if r = strings.TrimSpace(r); r != "" {
						to = append(to, r)
					}
				}
			}
			o.to = to
			modes := 0
			for _, on := range []bool{o.dir != "", o.jsonl != "", o.dir == "" && o.jsonl == "" && len(o.to) > 0} {
				if on {
					modes++
				}
			}
			if modes != 1 || o.concurrency < 1 || o.concurrency > 64 || (o.jsonl != "" && (len(o.to) > 0 || o.from != "")) {
				return usagef("choose one of --to, --dir or --jsonl (--concurrency 1-64)")
			}
			for _, f := range []struct {
				name string
				vals []string
			}{{"--subject", []string{o.subject}}, {"--from", []string{o.from}}, {"--to", o.to}} {
				if err := headerValue(f.name, f.vals); err != nil {
					return err
				}
			}
			if (o.user == "") != (o.passwordFile == "") {
				return usagef("--user and --password-file go together")
			}
			if o.passwordFile != "" {
				b, err := os.ReadFile(o.passwordFile)
				if err != nil {
					return fmt.Errorf("inject: --password-file: %w", err)
				}
				o.password = strings.TrimRight(string(b), "\r\n")
			}
			if !cmd.Flags().Changed("http-token") {
				o.httpToken = os.Getenv("MTAD_INJECT_TOKEN")
			}
			switch {
			case o.jsonl != "":
				return a.injectJSONL(&o)
			case o.dir != "":
				return a.injectDir(&o)
			}
			return a.injectOne(&o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.smtpAddr, "smtp", "127.0.0.1:2525", "the SMTP injection listener (inject.smtp.listen)")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:8026", "the HTTP injection listener (inject.http.listen), host:port or URL")
	f.StringVar(&o.from, "from", "", "envelope sender (default: mtactl@localhost, or the file's From)")
	// A string array split on commas here, not pflag's StringSlice: that
	// reads the value as CSV and drops everything after a line break, so
	// "a@x.test\nBcc: …" would pass as a@x.test, unchecked.
	f.StringArrayVar(&o.to, "to", nil, "recipient (repeat or comma-separate)")
	f.StringVar(&o.subject, "subject", "mtactl test message", "the test message's subject")
	f.StringVar(&o.user, "user", "", "AUTH PLAIN as this user (inject.smtp users file)")
	f.StringVar(&o.passwordFile, "password-file", "", "file holding the AUTH password (not a flag: it would show in ps)")
	f.BoolVar(&o.noTLS, "no-tls", false, "never STARTTLS, even when offered")
	f.BoolVar(&o.tlsSkipVerify, "tls-skip-verify", false, "STARTTLS without checking the certificate (a test listener's)")
	f.StringVar(&o.dir, "dir", "", "send every *.eml of this directory")
	f.StringVar(&o.jsonl, "jsonl", "", "POST each line of this file as an HTTP injection request")
	f.StringVar(&o.httpToken, "http-token", "", "bearer token for HTTP injection (env MTAD_INJECT_TOKEN)")
	f.IntVar(&o.concurrency, "concurrency", 4, "connections (requests) in parallel")
	return cmd
}

// headerValue refuses a value mtactl would write into a header that
// carries a control character: a CR or LF would end the field and start
// another (--subject $'x\r\nBcc: evil@example.test' would add a Bcc
// field), the others have no place in a header either.
func headerValue(flag string, vals []string) error {
	for _, v := range vals {
		for _, r := range v {
			if unicode.IsControl(r) {
				return usagef("%s %q: contains the control character %U; a header value is one line of text", flag, v, r)
			}
		}
	}
	return nil
}

// injectOne sends one generated message and prints its queue id.
func (a *app) injectOne(o *injectOpts) error {
	from := o.from
	if from == "" {
		from = "mtactl@localhost"
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	now := time.Now()
	msg := fmt.Sprintf("From: <%s>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%d.mtactl@%s>\r\n\r\nA test message sent by mtactl inject at %s.\r\n",
		from, "<"+strings.Join(o.to, ">, <")+">", o.subject, now.Format(time.RFC1123Z), now.UnixNano(), host, now.Format(time.RFC3339))
	s := &smtpSender{o: o}
	defer s.close()
	var t tally
	id := s.send("message", from, o.to, []byte(msg), &t)
	if t.refused == 0 && !a.asJSON {
		fmt.Fprintf(a.out, "queued as %s\n", id)
	}
	return a.report(&t)
}

// report prints the final count and the refusals (--json: as one JSON
// object on stdout); any refusal is exit 1.
func (a *app) report(t *tally) error {
	sort.Slice(t.refusals, func(i, j int) bool { return t.refusals[i].String() < t.refusals[j].String() })
	sort.Strings(t.ids)
	if a.asJSON {
		b, err := json.MarshalIndent(struct {
			Accepted int       `json:"accepted"`
			Refused  []refusal `json:"refused"`
			QueueIDs []string  `json:"queue_ids"`
		}{t.accepted, append([]refusal{}, t.refusals...), append([]string{}, t.ids...)}, "", "  ")
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(a.out, "%s\n", b); err != nil {
			return err
		}
	} else {
		for _, r := range t.refusals {
			fmt.Fprintln(a.errOut, "refused:", r)
		}
		fmt.Fprintf(a.errOut, "accepted %d, refused %d\n", t.accepted, t.refused)
	}
	if t.refused > 0 {
		return &refusedError{t.refused}
	}
	return nil
}

// smtpSender is one SMTP connection to the injection listener, opened on
// first use and again after a failure; one worker owns it.
type smtpSender struct {
	o *injectOpts
	c *smtp.Client
}

func (s *smtpSender) close() {
	if s.c != nil {
		_ = s.c.Quit()
		_ = s.c.Close()
		s.c = nil
	}
}

// dial connects and says EHLO, STARTTLS when offered (unless --no-tls)
// and AUTH when asked. go-smtp starts TLS only as the first step of a
// client, so a listener without STARTTLS costs a second connection.
func (s *smtpSender) dial() error {
	connect := func() (net.Conn, error) {
		conn, err := net.DialTimeout("tcp", s.o.smtpAddr, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", s.o.smtpAddr, err)
		}
		return conn, nil
	}
	conn, err := connect()
	if err != nil {
		return err
	}
	var c *smtp.Client
	if !s.o.noTLS {
		host, _, _ := net.SplitHostPort(s.o.smtpAddr)
		c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: host, InsecureSkipVerify: s.o.tlsSkipVerify})
		if err != nil && !strings.Contains(err.Error(), "support STARTTLS") {
			return fmt.Errorf("STARTTLS: %w", err)
		}
		if err != nil {
			if conn, err = connect(); err != nil {
				return err
			}
			c = nil
		} else if err := c.Noop(); err != nil {
			// The handshake and the EHLO after it happen on the first
			// command: make a bad certificate show as what it is.
			_ = c.Close()
			return fmt.Errorf("STARTTLS: %w", err)
		}
	}
	if c == nil {
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = time.Minute, 5*time.Minute
	if s.o.user != "" {
		if err := c.Auth(sasl.NewPlainClient("", s.o.user, s.o.password)); err != nil {
			_ = c.Close()
			return fmt.Errorf("AUTH: %w", err)
		}
	}
	s.c = c
	return nil
}

// send sends one message; recipients refused at RCPT are counted one by
// one, the others by DATA's reply. It returns the queue id of the 250
// ("queued as ID"), or its whole text. name is the source: the file, or
// "message" for the one generated message.
func (s *smtpSender) send(name, from string, to []string, msg []byte, t *tally) string {
	fail := func(rcpts []string, err error) string {
		refusals := make([]refusal, len(rcpts))
		for i, r := range rcpts {
			refusals[i] = refusal{Recipient: r, Reason: replyText(err), Source: name}
		}
		t.add(0, len(rcpts), refusals...)
		return ""
	}
	if s.c == nil {
		if err := s.dial(); err != nil {
			return fail(to, err)
		}
	}
	// A non-ASCII address or header field needs SMTPUTF8 (RFC 6531):
	// without it the daemon refuses user@bücher.test with 553 5.6.7.
	var mo *smtp.MailOptions
	if needsUTF8(from, to, msg) {
		mo = &smtp.MailOptions{UTF8: true}
	}
	if err := s.c.Mail(from, mo); err != nil {
		s.reset(err)
		return fail(to, err)
	}
	var ok []string
	for _, r := range to {
		if err := s.c.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) { // the connection, not the recipient
				s.reset(err)
				return fail(to, err)
			}
			fail([]string{r}, err)
			continue
		}
		ok = append(ok, r)
	}
	if len(ok) == 0 {
		s.reset(s.c.Reset())
		return ""
	}
	w, err := s.c.Data()
	if err != nil {
		s.reset(err)
		return fail(ok, err)
	}
	if _, err := w.Write(msg); err != nil {
		_ = w.Close()
		s.reset(err)
		return fail(ok, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		s.reset(err)
		return fail(ok, err)
	}
	t.add(len(ok), 0)
	id := resp.StatusText
	if i := strings.Index(id, "queued as "); i >= 0 {
		id = strings.TrimSpace(id[i+len("queued as "):])
	}
	t.queued(id)
	return id
}

// needsUTF8 reports whether the envelope or the header block has a
// non-ASCII byte. The body does not count: 8-bit content is 8BITMIME's
// matter, not SMTPUTF8's.
func needsUTF8(from string, to []string, msg []byte) bool {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i]
	} else if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		head = msg[:i]
	}
	for _, s := range append([]string{from, string(head)}, to...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= utf8.RuneSelf {
				return true
			}
		}
	}
	return false
}

// reset drops the connection after an error that is not an SMTP reply
// (the next message dials again); after a reply it stays usable.
func (s *smtpSender) reset(err error) {
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		if s.c != nil && err != nil {
			_ = s.c.Reset()
		}
		return
	}
	_ = s.c.Close()
	s.c = nil
}

// replyText is an SMTP error as "550 5.1.1 text", other errors as they are.
func replyText(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := se.EnhancedCode
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, e[0], e[1], e[2], se.Message)
	}
	return err.Error()
}

// injectDir sends every *.eml of o.dir over o.concurrency connections.
func (a *app) injectDir(o *injectOpts) error {
	files, err := filepath.Glob(filepath.Join(o.dir, "*.eml"))
	if err != nil {
		return fmt.Errorf("inject: --dir: %w", err)
	}
	if len(files) == 0 {
		return fmt.Errorf("inject: no *.eml in %s", o.dir)
	}
	bar := a.progress(len(files), "inject")
	var t tally
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range min(o.concurrency, len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &smtpSender{o: o}
			defer s.close()
			for path := range jobs {
				name := filepath.Base(path)
				from, to, msg, err := readEML(path, o)
				if err != nil {
					t.add(0, 1, refusal{Reason: err.Error(), Source: name})
				} else {
					s.send(name, from, to, msg, &t)
				}
				bar.add()
			}
		}()
	}
	for _, f := range files {
		jobs <- f
	}
	close(jobs)
	wg.Wait()
	bar.done()
	return a.report(&t)
}

// readEML reads a message file and its envelope: --from or the From
// header's address, --to or the To, Cc and Bcc addresses. A Bcc field is
// taken out of what is sent, as a submission server would.
func readEML(path string, o *injectOpts) (from string, to []string, msg []byte, err error) {
	msg, err = os.ReadFile(path)
	if err != nil {
		return "", nil, nil, err
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return "", nil, nil, fmt.Errorf("not a message: %w", err)
	}
	from = o.from
	if from == "" {
		l, err := m.Header.AddressList("From")
		if err != nil || len(l) == 0 {
			return "", nil, nil, fmt.Errorf("no --from and no From address: %v", err)
		}
		from = l[0].Address
	}
	to = o.to
	if len(to) == 0 {
		for _, h := range []string{"To", "Cc", "Bcc"} {
			l, err := m.Header.AddressList(h)
			if err != nil && !errors.Is(err, mail.ErrHeaderNotPresent) {
				return "", nil, nil, fmt.Errorf("%s: %w", h, err)
			}
			for _, ad := range l {
				to = append(to, ad.Address)
			}
		}
		if len(to) == 0 {
			return "", nil, nil, errors.New("no --to and no To, Cc or Bcc address")
		}
	}
	return from, to, dropBcc(msg), nil
}

// dropBcc removes the Bcc field (and its continuation lines) from the
// header block.
func dropBcc(msg []byte) []byte {
	var out bytes.Buffer
	inHeader, inBcc := true, false
	for _, line := range bytes.SplitAfter(msg, []byte("\n")) {
		if inHeader {
			if len(bytes.TrimRight(line, "\r\n")) == 0 {
				inHeader = false
			} else if line[0] == ' ' || line[0] == '\t' {
				if inBcc {
					continue
				}
			} else {
				inBcc = len(line) >= 4 && strings.EqualFold(string(line[:4]), "bcc:")
				if inBcc {
					continue
				}
			}
		}
		out.Write(line)
	}
	return out.Bytes()
}

// injectJSONL posts each non-empty line of o.jsonl to the HTTP injection
// API, o.concurrency at a time.
func (a *app) injectJSONL(o *injectOpts) error {
	f, err := os.Open(o.jsonl)
	if err != nil {
		return fmt.Errorf("inject: --jsonl: %w", err)
	}
	defer f.Close()
	// Each request keeps its line number, blank lines counted, so that a
	// refusal names the line an editor shows.
	type request struct {
		n    int
		body []byte
	}
	var lines []request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a line carries a whole message
	for n := 1; sc.Scan(); n++ {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 {
			lines = append(lines, request{n, append([]byte(nil), l...)})
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("inject: --jsonl %s: %w", o.jsonl, err)
	}
	target := o.httpAddr
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	target = strings.TrimRight(target, "/") + "/api/v1/messages"
	hc := &http.Client{Timeout: a.timeout}
	defer hc.CloseIdleConnections()
	bar := a.progress(len(lines), "inject")
	var t tally
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(o.concurrency, max(len(lines), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				postLine(hc, target, o.httpToken, lines[i].n, lines[i].body, &t)
				bar.add()
			}
		}()
	}
	for i := range lines {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	bar.done()
	return a.report(&t)
}

// postLine sends one injection request and counts its recipients.
func postLine(hc *http.Client, target, token string, n int, line []byte, t *tally) {
	req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(line))
	if err != nil {
		t.add(0, 1, refusal{Reason: err.Error(), Source: fmt.Sprintf("line %d", n)})
		return
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.add(0, lineRecipients(line), refusal{Reason: err.Error(), Source: fmt.Sprintf("line %d", n)})
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusAccepted {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		t.add(0, lineRecipients(line), refusal{Reason: resp.Status + ": " + e.Error, Source: fmt.Sprintf("line %d", n)})
		return
	}
	var r struct {
		Accepted int       `json:"accepted"`
		Refused  []refusal `json:"refused"`
		IDs      []string  `json:"ids"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.add(0, lineRecipients(line), refusal{Reason: fmt.Sprintf("the answer is not an injection result: %q", b), Source: fmt.Sprintf("line %d", n)})
		return
	}
	for i := range r.Refused {
		r.Refused[i].Source = fmt.Sprintf("line %d", n)
	}
	t.add(r.Accepted, len(r.Refused), r.Refused...)
	t.queued(r.IDs...)
}

// lineRecipients is how many recipients a refused request had, so that
// the counts stay in recipients; 1 when the line does not say.
func lineRecipients(line []byte) int {
	var r struct {
		Recipients []json.RawMessage `json:"recipients"`
	}
	if json.Unmarshal(line, &r) != nil || len(r.Recipients) == 0 {
		return 1
	}
	return len(r.Recipients)
}

// progress is a bar on stderr when it is a terminal; otherwise nothing
// (the final count is the only line). The bar is given its length, so
// progressbar starts no spinner goroutine (it does only for an unknown
// length) and nothing outlives the command.
type progress struct{ bar *progressbar.ProgressBar }

func (a *app) progress(n int, what string) *progress {
	f, ok := a.errOut.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return &progress{}
	}
	return newProgress(f, n, what)
}

// newProgress draws the bar on w. It is not cleared on finish: with
// OptionClearOnFinish the last frame drawn stayed on the screen, the bar
// throttled short of the end (199/200, 99%) above "accepted 200".
// Finished, it is drawn at 100% and its line ended.
func newProgress(w io.Writer, n int, what string) *progress {
	return &progress{progressbar.NewOptions(n, progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what), progressbar.OptionShowCount(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }))}
}

func (p *progress) add() {
	if p.bar != nil {
		_ = p.bar.Add(1)
	}
}

func (p *progress) done() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
