// Command mtactl is the operator's command line for a running mtad. It talks
// to the daemon's admin HTTP API (and, for `inject`, to its injection
// listeners) and prints what it answers; it holds no state and changes
// nothing but through those interfaces.
//
// The commands are cobra commands: `mtactl help` lists them and `mtactl
// help CMD` (or CMD --help) shows each one's flags. Global flags:
//
//	--admin HOST:PORT|URL   where the admin API listens (env MTAD_ADMIN, default 127.0.0.1:8025):
//	                        admin.listen's host:port, or a base URL
//	--token T               sent as "Authorization: Bearer" (env MTAD_ADMIN_TOKEN, better: a flag shows in ps)
//	--json                  print the API's JSON, indented, instead of tables
//	--timeout D             each request's bound
//
// Exit codes: 0 done, 1 the daemon refused or could not be reached (the
// HTTP status and the API's error are printed as "mtactl: ..."), 2 a
// usage error (with the command's usage line).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// usageError is a command line mtactl cannot run: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// app is one run of mtactl: its streams, the global flags and the admin
// client built from them. Built afresh by each run, so tests run in
// parallel.
type app struct {
	in          io.Reader
	out, errOut io.Writer
	admin       string
	token       string
	timeout     time.Duration
	asJSON      bool
	root        *cobra.Command
	c           *client
}

// run executes one command line and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{in: stdin, out: stdout, errOut: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if a.c != nil {
		a.c.http.CloseIdleConnections()
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command"):
		name := "mtactl"
		if cmd != nil && cmd != root {
			name = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "%s: %s\n", name, err)
		if cmd != nil {
			fmt.Fprintf(stderr, "usage: %s\n%s\n", cmd.UseLine(), helpHint(cmd))
		}
		return 2
	}
	fmt.Fprintln(stderr, "mtactl:", err)
	return 1
}

// helpHint says where more help is: the command's own page, or the
// list of commands when the command line named none mtactl knows.
func helpHint(cmd *cobra.Command) string {
	sub := strings.TrimSpace(strings.TrimPrefix(cmd.CommandPath(), "mtactl"))
	if sub == "" {
		return "run 'mtactl help' for the commands"
	}
	return "run 'mtactl help " + sub + "' for more"
}

// refusedError is a command whose requests went through but some were
// refused (inject): exit 1, the counts and reasons already printed.
type refusedError struct{ n int }

func (e *refusedError) Error() string {
	return fmt.Sprintf("%d recipient%s refused", e.n, plural(e.n))
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "mtactl",
		Short:         "the operator's command line for a running mtad",
		Version:       version,
		SilenceErrors: true, // run prints them once, with the exit code's meaning
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return usagef("no command given; 'mtactl help' lists them")
		},
	}
	// A zero or negative bound would make every request fail at once
	// (or, for http.Client, never time out): refuse it before any.
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if a.timeout <= 0 {
			return usagef("--timeout %s: want a positive duration, e.g. 10s", a.timeout)
		}
		return nil
	}
	root.SetVersionTemplate("mtactl {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	pf := root.PersistentFlags()
	// The environment values are read when the flag is not given (see
	// client), not as defaults: --help must not print a token.
	pf.StringVar(&a.admin, "admin", "127.0.0.1:8025", "the daemon's admin.listen as host:port, or a base URL http(s)://host:port[/prefix] (env MTAD_ADMIN)")
	pf.StringVar(&a.token, "token", "", "admin bearer token, one of admin.tokens_file's (env MTAD_ADMIN_TOKEN, better: a flag shows in ps)")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "each request's bound")
	pf.BoolVar(&a.asJSON, "json", false, "print the API's JSON, indented, instead of tables")
	a.root = root

	for _, r := range []struct{ name, path, short string }{
		{"health", "/healthz", "exits 0 when the daemon answers healthy"},
		{"ready", "/readyz", "exits 0 when /readyz says ready (spool, listeners, scheduler)"},
		{"metrics", "/metrics", "the Prometheus metrics text"},
	} {
		root.AddCommand(a.rawCmd(r.name, r.path, r.short))
	}
	root.AddCommand(a.statusCmd(), a.summaryCmd(), a.queueSummaryCmd(), a.domainCmd(), a.bindingCmd(), a.messageCmd(),
		a.shapingCmd(), a.suspensionsCmd(), a.suspendCmd(), a.resumeCmd(), a.throttlesCmd(), a.unthrottleCmd(), a.clusterCmd(),
		a.cancelCmd(), a.flushCmd(), a.bounceCmd(), a.rebindCmd(), a.reloadCmd(), a.quarantineCmd(),
		a.topCmd(), a.injectCmd())
	return root
}

// client returns the admin API client, built on first use from the
// global flags and the environment. A bad address is a usage error naming
// where it came from: a bad MTAD_ADMIN must not be blamed on a --admin
// the user never typed.
func (a *app) client() (*client, error) {
	if a.c != nil {
		return a.c, nil
	}
	pf := a.root.PersistentFlags()
	v, source := a.admin, "--admin"
	if env := os.Getenv("MTAD_ADMIN"); !pf.Changed("admin") && env != "" {
		v, source = env, "MTAD_ADMIN"
	}
	base, err := adminBase(v)
	if err != nil {
		return nil, usagef("%s: %v", source, err)
	}
	token := a.token
	if !pf.Changed("token") {
		token = os.Getenv("MTAD_ADMIN_TOKEN")
	}
	a.c = &client{http: &http.Client{Timeout: a.timeout}, base: base, token: strings.TrimSpace(token)}
	return a.c, nil
}

// call sends one request to the admin API.
func (a *app) call(method, path string, body any) (int, []byte, error) {
	c, err := a.client()
	if err != nil {
		return 0, nil, err
	}
	return c.do(method, path, body)
}

// get GETs path; with --json it prints the answer and says done.
func (a *app) get(path string) (body []byte, done bool, err error) {
	_, b, err := a.call(http.MethodGet, path, nil)
	if err != nil {
		return nil, true, err
	}
	if a.asJSON {
		return nil, true, a.printJSON(b)
	}
	return b, false, nil
}

// send is get for a change: it sends body and, with --json, prints the
// answer and says done.
func (a *app) send(method, path string, body any) (code int, b []byte, done bool, err error) {
	code, b, err = a.call(method, path, body)
	if err != nil {
		return code, nil, true, err
	}
	if a.asJSON {
		return code, nil, true, a.printJSON(b)
	}
	return code, b, false, nil
}

// printJSON prints the API's answer indented; an answer that is not JSON
// (metrics) as it came.
func (a *app) printJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(b), "", "  "); err != nil {
		_, err = a.out.Write(b)
		return err
	}
	buf.WriteByte('\n')
	_, err := a.out.Write(buf.Bytes())
	return err
}

// statusCmd prints the daemon's state (GET /api/v1/status) as key/value
// lines and tables; --json as the API gives it.
func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "queue and connection state",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get("/api/v1/status")
			if done {
				return err
			}
			return printDoc(a.out, "status", b)
		},
	}
}

// rawCmd prints the answer to GET path as it comes (--json: indented).
func (a *app) rawCmd(name, path, short string) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, b, err := a.call(http.MethodGet, path, nil)
			if err != nil {
				return err
			}
			if a.asJSON {
				return a.printJSON(b)
			}
			_, err = a.out.Write(b)
			return err
		},
	}
}

// nargs checks a command's positional argument count, as a usage error.
func nargs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case max == 0 && len(args) > 0:
			return usagef("takes no arguments, got %q", args)
		case len(args) < min || len(args) > max:
			return usagef("wants %s, got %q", argWord(min, max), args)
		}
		return nil
	}
}

func argWord(min, max int) string {
	if min == max {
		return fmt.Sprintf("%d argument%s", min, plural(min))
	}
	return fmt.Sprintf("%d to %d arguments", min, max)
}

// defaultBy is who acts when --by is not given: $USER@hostname, the way
// an operator is named in the daemon's log.
func defaultBy() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); name == "" && err == nil {
		name = u.Username
	}
	if name == "" {
		name = "operator"
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return name + "@" + h
	}
	return name
}

// byFlag and reasonFlag are --by and --reason, which every change takes.
func byFlag(f *pflag.FlagSet, by *string) {
	f.StringVar(by, "by", defaultBy(), "who acts, for the log")
}

func reasonFlag(f *pflag.FlagSet, reason *string) {
	f.StringVar(reason, "reason", "", "why, for the log and the listings")
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
	code                      int
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
	resp, err := c.open(method, path, body)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}

// open sends a request and returns the answer for its body to be read;
// a non-2xx answer is an *apiError (with the API's error text), its body
// closed.
func (c *client) open(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return nil, &apiError{method, path, resp.Status, e.Error, resp.StatusCode}
	}
	return resp, nil
}

// stream copies the answer to GET path to stdout as it comes: a message
// body may be 50 MB and is never held whole.
func (a *app) stream(path string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	resp, err := c.open(http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(a.out, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
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

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
