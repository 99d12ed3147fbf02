package main

// The policy commands: shaping resolve, suspensions, suspend, resume,
// throttles, unthrottle. As every command, mtactl says early only what is
// surely missing; the API checks every field and names the bad one.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// shapingCmd: shaping resolve DOMAIN [--binding B].
func (a *app) shapingCmd() *cobra.Command {
	parent := &cobra.Command{
		Use:   "shaping resolve DOMAIN [--binding B]",
		Short: "the shaping in force for a domain/binding pair",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("want a subcommand: resolve DOMAIN [--binding B]")
		},
	}
	var binding string
	resolve := &cobra.Command{
		Use:   "resolve DOMAIN [--binding B]",
		Short: "the pair's shaping: key, value, the scope it came from",
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get(shapingPath(args[0], binding))
			if done {
				return err
			}
			return printShaping(a.out, b)
		},
	}
	resolve.Flags().StringVar(&binding, "binding", "", "resolve for this binding (its narrowings apply)")
	parent.AddCommand(resolve)
	return parent
}

func shapingPath(domain, binding string) string {
	q := url.Values{"domain": {domain}}
	if binding != "" {
		q.Set("binding", binding)
	}
	return "/api/v1/shaping?" + q.Encode()
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

// suspensionsCmd: suspensions.
func (a *app) suspensionsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "suspensions",
		Short: "the suspensions in force",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get("/api/v1/suspensions")
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
			return writeTable(a.out, []string{"ID", "SCOPE", "NAME", "BINDING", "UNTIL", "SOURCE", "RULE", "REASON"}, rows)
		},
	}
}

// suspendCmd: suspend SCOPE NAME --duration D --reason WHY [--binding B].
func (a *app) suspendCmd() *cobra.Command {
	var duration, binding, by, reason string
	cmd := &cobra.Command{
		Use:   "suspend SCOPE NAME --duration D --reason WHY [--binding B] [--by WHO]",
		Short: "stop delivery to a scope for a while",
		Long: `Suspend delivery to a scope until --duration has passed or 'mtactl resume ID'.
SCOPE is domain, site, provider, binding or pair; for binding, NAME is the
binding; a pair needs --binding; a site is its MX hosts joined by ",".`,
		Args: nargs(2, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if duration == "" || reason == "" {
				return usagef("--duration and --reason are required")
			}
			req := map[string]string{"scope": args[0], "name": args[1], "binding": binding,
				"duration": duration, "reason": reason, "by": by}
			code, b, done, err := a.send(http.MethodPost, "/api/v1/suspensions", req)
			if done {
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
			_, err = fmt.Fprintf(a.out, "%s %s: %s until %s\n", verb, s.ID, scopeText(s.Scope, s.Name, s.Binding), when(s.Until))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&duration, "duration", "", "how long, e.g. 2h (at most 720h)")
	f.StringVar(&binding, "binding", "", "suspend from this binding only")
	byFlag(f, &by)
	reasonFlag(f, &reason)
	return cmd
}

// resumeCmd: resume ID [--reason WHY] [--by WHO].
func (a *app) resumeCmd() *cobra.Command {
	var by, reason string
	cmd := &cobra.Command{
		Use:   "resume ID [--reason WHY] [--by WHO]",
		Short: "lift a suspension",
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "" {
				return usagef("empty ID")
			}
			_, b, done, err := a.send(http.MethodDelete, "/api/v1/suspensions/"+url.PathEscape(args[0])+actorQuery(nil, by, reason), nil)
			if done {
				return err
			}
			var s suspension
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("resume: the answer is not a suspension: %w", err)
			}
			_, err = fmt.Fprintf(a.out, "resumed %s: %s\n", s.ID, scopeText(s.Scope, s.Name, s.Binding))
			return err
		},
	}
	byFlag(cmd.Flags(), &by)
	reasonFlag(cmd.Flags(), &reason)
	return cmd
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

// throttlesCmd: throttles.
func (a *app) throttlesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "throttles",
		Short: "the rule throttles in force",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get("/api/v1/throttles")
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
			return writeTable(a.out, []string{"SCOPE", "RULE", "MAX_MESSAGE_RATE", "MAX_CONNECTIONS", "END", "RAMP", "UNTIL"}, rows)
		},
	}
}

// unthrottleCmd: unthrottle SCOPE_KEY [--reason WHY] [--by WHO].
func (a *app) unthrottleCmd() *cobra.Command {
	var by, reason string
	cmd := &cobra.Command{
		Use:   "unthrottle SCOPE_KEY [--reason WHY] [--by WHO]",
		Short: "lift a rule throttle (SCOPE_KEY as 'mtactl throttles' lists it)",
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "" {
				return usagef("empty SCOPE_KEY")
			}
			_, b, done, err := a.send(http.MethodDelete, "/api/v1/throttles"+actorQuery(url.Values{"scope": {args[0]}}, by, reason), nil)
			if done {
				return err
			}
			var t throttle
			if err := json.Unmarshal(b, &t); err != nil {
				return fmt.Errorf("unthrottle: the answer is not a throttle: %w", err)
			}
			_, err = fmt.Fprintf(a.out, "unthrottled %s (rule %s)\n", t.Scope, t.Rule)
			return err
		},
	}
	byFlag(cmd.Flags(), &by)
	reasonFlag(cmd.Flags(), &reason)
	return cmd
}
