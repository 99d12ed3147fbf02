// Command mtactl is the operator's command line for a running mtad. It talks
// to the daemon's admin HTTP API and prints what it answers; it holds no
// state and changes nothing but through that API.
//
//	mtactl status                       queue and connection state, as JSON
//	mtactl summary [--json]             totals and last-minute counts, queue, connections, spool, suspensions
//	mtactl health                       exits 0 when the daemon answers healthy
//	mtactl ready                        exits 0 when /readyz says ready (spool, listeners, scheduler)
//	mtactl metrics                      the Prometheus metrics text
//	mtactl shaping resolve DOMAIN [--binding B] [--json]
//	                                    the pair's shaping: key, value, the scope it came from
//	mtactl suspensions [--json]         the suspensions in force
//	mtactl suspend SCOPE NAME --duration 2h --reason WHY [--binding B] [--by WHO]
//	                                    SCOPE: domain, site, provider, binding (NAME is the binding), pair
//	mtactl resume ID [--reason WHY] [--by WHO]
//	mtactl throttles [--json]           the rule throttles in force
//	mtactl unthrottle SCOPE_KEY [--reason WHY] [--by WHO]
//	mtactl cancel (--queue-id ID | --domain D | --sender S) --reason WHY [--dsn] [--by WHO]
//	                                    end queued recipients now (logged as cancelled)
//	mtactl flush [DOMAIN] [--binding B] [--by WHO]
//	                                    retry delayed mail now; no DOMAIN is every domain
//
// --admin (env MTAD_ADMIN, default 127.0.0.1:8025) is where the daemon's
// admin API listens: admin.listen's host:port, or a base URL.
// --token (or MTAD_ADMIN_TOKEN, better: a flag shows in ps) is sent as
// "Authorization: Bearer" when the daemon has admin.tokens_file.
//
// Exit codes: 0 done, 1 the daemon refused or could not be reached (the
// HTTP status and the API's error are printed), 2 a usage error.
//
// Each command is one function of (client, args, stdout) so that it can
// move to a command framework unchanged.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

var version = "dev"

const usage = `usage: mtactl [--admin HOST:PORT|URL] [--token T] [--timeout D] COMMAND [ARGS]

commands:
  status | health | ready | metrics
  summary [--json]
  shaping resolve DOMAIN [--binding B] [--json]
  suspensions [--json]
  suspend SCOPE NAME --duration D --reason WHY [--binding B] [--by WHO] [--json]
      SCOPE is domain, site, provider, binding or pair; for binding, NAME is
      the binding; a pair needs --binding; a site is its MX hosts joined by ","
  resume ID [--reason WHY] [--by WHO] [--json]
  throttles [--json]
  unthrottle SCOPE_KEY [--reason WHY] [--by WHO] [--json]
  cancel (--queue-id ID | --domain D | --sender S) --reason WHY [--dsn] [--by WHO] [--json]
      ends the chosen queued recipients now; a domain's leaves the
      messages' other recipients queued; --dsn tells the sender
  flush [DOMAIN] [--binding B] [--by WHO] [--json]
      retries delayed mail now; without DOMAIN, every domain's
  cluster [--json]
      the nodes sharing limits through Redis: version, queued, last heartbeat

global flags:`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command line mtactl cannot run: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mtactl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", envOr("MTAD_ADMIN", "127.0.0.1:8025"), "the daemon's admin.listen as host:port, or a base URL http(s)://host:port[/prefix] (env MTAD_ADMIN)")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	// The environment is the better place for a token: a flag shows in ps.
	token := fs.String("token", os.Getenv("MTAD_ADMIN_TOKEN"), "admin bearer token, one of admin.tokens_file's (env MTAD_ADMIN_TOKEN)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mtactl", version)
		return 0
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	// The value's source is named in its error: a bad MTAD_ADMIN must not
	// be blamed on a --admin the user never typed.
	source := "--admin"
	if !flagSet(fs, "admin") && os.Getenv("MTAD_ADMIN") != "" {
		source = "MTAD_ADMIN"
	}
	base, err := adminBase(*admin)
	if err != nil {
		fmt.Fprintf(stderr, "mtactl: %s: %v\n", source, err)
		return 2
	}
	c := &client{http: &http.Client{Timeout: *timeout}, base: base, token: strings.TrimSpace(*token)}
	cmds := map[string]func(*client, []string, io.Writer) error{
		"status":      raw("/api/v1/status"),
		"health":      raw("/healthz"),
		"ready":       raw("/readyz"),
		"metrics":     raw("/metrics"),
		"summary":     summaryCmd,
		"shaping":     shapingCmd,
		"suspensions": suspensionsCmd,
		"suspend":     suspendCmd,
		"resume":      resumeCmd,
		"throttles":   throttlesCmd,
		"unthrottle":  unthrottleCmd,
		"cancel":      cancelCmd,
		"flush":       flushCmd,
		"cluster":     clusterCmd,
	}
	cmd := cmds[fs.Arg(0)]
	if cmd == nil {
		fmt.Fprintf(stderr, "mtactl: unknown command %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	err = cmd(c, fs.Args()[1:], stdout)
	c.http.CloseIdleConnections()
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "mtactl %s: %s\n", fs.Arg(0), err)
		fmt.Fprintln(stderr, "run mtactl --help for usage")
		return 2
	}
	fmt.Fprintln(stderr, "mtactl:", err)
	return 1
}

// flagSet reports whether the named flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// adminBase turns the --admin value into the base URL requests go to. It
// takes what an operator has at hand: admin.listen as the config writes it
// (127.0.0.1:8025, [::1]:8025, localhost:8025) or a URL (http://127.0.0.1:8025,
// https://mtad.example.com/admin behind a proxy). Anything else is refused
// with what was wrong, rather than a request to a nonsense address.
func adminBase(v string) (string, error) {
	if v == "" {
		return "", errors.New("empty; want host:port (e.g. 127.0.0.1:8025) or http://host:port")
	}
	if !strings.Contains(v, "://") {
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			return "", fmt.Errorf("%q: want host:port (e.g. 127.0.0.1:8025) or http://host:port", v)
		}
		if host == "" {
			return "", fmt.Errorf("%q: no host; the daemon listens on one address, e.g. 127.0.0.1%s", v, v)
		}
		if err := checkPort(v, port); err != nil {
			return "", err
		}
		if strings.ContainsAny(host, "/?#@ ") {
			return "", fmt.Errorf("%q: %q is not a host name or address", v, host)
		}
		return "http://" + net.JoinHostPort(host, port), nil
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("%q: not a URL: %w", v, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%q: scheme %q; want http or https", v, u.Scheme)
	case u.Hostname() == "":
		return "", fmt.Errorf("%q: no host", v)
	case u.User != nil:
		return "", fmt.Errorf("%q: user info in the URL; the admin API takes no password there", v)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(v, "?") || strings.HasSuffix(v, "#"):
		return "", fmt.Errorf("%q: a query or fragment; want only http(s)://host:port[/prefix]", v)
	}
	if p := u.Port(); p != "" || strings.HasSuffix(u.Host, ":") {
		if err := checkPort(v, p); err != nil {
			return "", err
		}
	}
	return strings.TrimRight(v, "/"), nil
}

// checkPort refuses a port that is not a number in 1-65535.
func checkPort(v, port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", v, port)
	}
	return nil
}

// ------------------------------------------------------------------ client

// client calls the admin API.
type client struct {
	http  *http.Client
	base  string
	token string // sent as "Authorization: Bearer"; "" = none
}

// apiError is a non-2xx answer: the status and the API's error text.
type apiError struct {
	method, path, status, msg string
}

func (e *apiError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("%s %s: %s", e.method, e.path, e.status)
	}
	return fmt.Sprintf("%s %s: %s: %s", e.method, e.path, e.status, e.msg)
}

// do sends a request (body, if any, as JSON) and returns the answer's
// status code and body; a non-2xx answer is an *apiError.
func (c *client) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, nil, &apiError{method, path, resp.Status, e.Error}
	}
	return resp.StatusCode, b, nil
}

// raw prints the answer to GET path as it comes.
func raw(path string) func(*client, []string, io.Writer) error {
	return func(c *client, args []string, out io.Writer) error {
		if len(args) > 0 {
			return usagef("takes no arguments, got %q", args)
		}
		_, b, err := c.do(http.MethodGet, path, nil)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	}
}

// parseArgs parses a command's flags wherever they are among its
// positional arguments ("resolve example.com --binding b1"), which the
// flag package alone stops at, and returns the positional ones. After
// "--" everything is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard) // errors are reported once, by run
	var pos, tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, tail...), nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// writeTable prints rows aligned in columns, blanks shown as "-".
func writeTable(out io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if cells[i] = c; c == "" {
				cells[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// when prints an API time to the second, in UTC as the API gives it.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// ------------------------------------------------------------------ shaping

// shapingCmd: shaping resolve DOMAIN [--binding B] [--json].
func shapingCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("shaping resolve", flag.ContinueOnError)
	binding := fs.String("binding", "", "resolve for this binding (its narrowings apply)")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || pos[0] != "resolve" {
		return usagef("usage: shaping resolve DOMAIN [--binding B] [--json]")
	}
	q := url.Values{"domain": {pos[1]}}
	if *binding != "" {
		q.Set("binding", *binding)
	}
	_, b, err := c.do(http.MethodGet, "/api/v1/shaping?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err = out.Write(b)
		return err
	}
	return printShaping(out, b)
}

// printShaping prints the pair's fields, then a table of its keys in the
// API's order: key, value, source.
func printShaping(out io.Writer, b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("shaping: the answer is not a JSON object")
	}
	var head, rows [][]string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("shaping: reading the answer: %w", err)
		}
		k, _ := t.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("shaping: reading %s: %w", k, err)
		}
		switch v := v.(type) {
		case map[string]any: // a key: {"value", "source"}
			src, _ := v["source"].(string)
			rows = append(rows, []string{k, fmt.Sprint(v["value"]), src})
		case []any:
			s := make([]string, len(v))
			for i, e := range v {
				s[i] = fmt.Sprint(e)
			}
			head = append(head, []string{k, strings.Join(s, " ")})
		default:
			head = append(head, []string{k, fmt.Sprint(v)})
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, h := range head {
		if h[1] == "" {
			h[1] = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\n", h[0], h[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	return writeTable(out, []string{"KEY", "VALUE", "SOURCE"}, rows)
}

// -------------------------------------------------------------- suspensions

// suspension is one entry of the API's suspension list.
type suspension struct {
	ID      string    `json:"id"`
	Scope   string    `json:"scope"`
	Name    string    `json:"name"`
	Binding string    `json:"binding"`
	Start   time.Time `json:"start"`
	Until   time.Time `json:"until"`
	Source  string    `json:"source"`
	Rule    string    `json:"rule"`
	Reason  string    `json:"reason"`
}

// getView starts a read-only listing command (no arguments but --json):
// it GETs path and, with --json or on an error, prints the answer or
// returns the error and says done; otherwise the caller renders body.
func getView(c *client, name, path string, args []string, out io.Writer) (body []byte, done bool, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, true, err
	}
	if len(pos) != 0 {
		return nil, true, usagef("takes no arguments, got %q", pos)
	}
	_, b, err := c.do(http.MethodGet, path, nil)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return nil, true, err
	}
	return b, false, nil
}

// suspensionsCmd: suspensions [--json].
func suspensionsCmd(c *client, args []string, out io.Writer) error {
	b, done, err := getView(c, "suspensions", "/api/v1/suspensions", args, out)
	if done {
		return err
	}
	var list struct {
		Suspensions []suspension `json:"suspensions"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("suspensions: the answer is not a suspension list: %w", err)
	}
	rows := make([][]string, len(list.Suspensions))
	for i, s := range list.Suspensions {
		rows[i] = []string{s.ID, s.Scope, s.Name, s.Binding, when(s.Until), s.Source, s.Rule, s.Reason}
	}
	return writeTable(out, []string{"ID", "SCOPE", "NAME", "BINDING", "UNTIL", "SOURCE", "RULE", "REASON"}, rows)
}

// actorFlags are --by and --reason, which every change takes.
func actorFlags(fs *flag.FlagSet) (by, reason *string) {
	return fs.String("by", "", `who acts, for the log (default "operator")`),
		fs.String("reason", "", "why, for the log and the listings")
}

// suspendCmd: suspend SCOPE NAME --duration D --reason WHY [--binding B].
func suspendCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("suspend", flag.ContinueOnError)
	duration := fs.String("duration", "", "how long, e.g. 2h (at most 720h)")
	binding := fs.String("binding", "", "suspend from this binding only")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	by, reason := actorFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("usage: suspend SCOPE NAME --duration D --reason WHY [--binding B]")
	}
	// The API checks every field and names the bad one; mtactl only
	// says early what is surely missing.
	if *duration == "" || *reason == "" {
		return usagef("--duration and --reason are required")
	}
	req := map[string]string{"scope": pos[0], "name": pos[1], "binding": *binding,
		"duration": *duration, "reason": *reason, "by": *by}
	code, b, err := c.do(http.MethodPost, "/api/v1/suspensions", req)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return err
	}
	var s suspension
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("suspend: the answer is not a suspension: %w", err)
	}
	verb := "suspended"
	if code != http.StatusCreated {
		verb = "already suspended until later, kept"
	}
	_, err = fmt.Fprintf(out, "%s %s: %s until %s\n", verb, s.ID, scopeText(s.Scope, s.Name, s.Binding), when(s.Until))
	return err
}

// resumeCmd: resume ID [--reason WHY] [--by WHO].
func resumeCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("resume", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	by, reason := actorFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usagef("usage: resume ID [--reason WHY] [--by WHO]")
	}
	_, b, err := c.do(http.MethodDelete, "/api/v1/suspensions/"+url.PathEscape(pos[0])+actorQuery(nil, *by, *reason), nil)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return err
	}
	var s suspension
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("resume: the answer is not a suspension: %w", err)
	}
	_, err = fmt.Fprintf(out, "resumed %s: %s\n", s.ID, scopeText(s.Scope, s.Name, s.Binding))
	return err
}

// actorQuery adds by and reason, when given, to q as a query string.
func actorQuery(q url.Values, by, reason string) string {
	if q == nil {
		q = url.Values{}
	}
	if by != "" {
		q.Set("by", by)
	}
	if reason != "" {
		q.Set("reason", reason)
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// scopeText says what a suspension or throttle covers: "domain example.com
// from b1".
func scopeText(kind, name, binding string) string {
	s := kind
	if name != "" {
		s += " " + name
	}
	if binding != "" {
		s += " from " + binding
	}
	return s
}

// ---------------------------------------------------------------- throttles

type throttle struct {
	Scope          string    `json:"scope"`
	Kind           string    `json:"kind"`
	Name           string    `json:"name"`
	Binding        string    `json:"binding"`
	Rule           string    `json:"rule"`
	MaxMessageRate *string   `json:"max_message_rate"`
	MaxConnections *int      `json:"max_connections"`
	End            time.Time `json:"end"`
	Ramp           string    `json:"ramp"`
	Until          time.Time `json:"until"`
}

// throttlesCmd: throttles [--json].
func throttlesCmd(c *client, args []string, out io.Writer) error {
	b, done, err := getView(c, "throttles", "/api/v1/throttles", args, out)
	if done {
		return err
	}
	var list struct {
		Throttles []throttle `json:"throttles"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("throttles: the answer is not a throttle list: %w", err)
	}
	rows := make([][]string, len(list.Throttles))
	for i, t := range list.Throttles {
		var rate, conns string
		if t.MaxMessageRate != nil {
			rate = *t.MaxMessageRate
		}
		if t.MaxConnections != nil {
			conns = fmt.Sprint(*t.MaxConnections)
		}
		rows[i] = []string{t.Scope, t.Rule, rate, conns, when(t.End), t.Ramp, when(t.Until)}
	}
	return writeTable(out, []string{"SCOPE", "RULE", "MAX_MESSAGE_RATE", "MAX_CONNECTIONS", "END", "RAMP", "UNTIL"}, rows)
}

// unthrottleCmd: unthrottle SCOPE_KEY [--reason WHY] [--by WHO].
func unthrottleCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("unthrottle", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	by, reason := actorFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usagef("usage: unthrottle SCOPE_KEY [--reason WHY] [--by WHO] (SCOPE_KEY as `mtactl throttles` lists it)")
	}
	_, b, err := c.do(http.MethodDelete, "/api/v1/throttles"+actorQuery(url.Values{"scope": {pos[0]}}, *by, *reason), nil)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return err
	}
	var t throttle
	if err := json.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("unthrottle: the answer is not a throttle: %w", err)
	}
	_, err = fmt.Fprintf(out, "unthrottled %s (rule %s)\n", t.Scope, t.Rule)
	return err
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
