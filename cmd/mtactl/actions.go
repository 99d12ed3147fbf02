package main

// The action commands on queued mail: cancel, bounce, flush, rebind, the
// quarantine, and reload. As every command, mtactl says early only what
// is surely missing; the API checks every field and names the bad one.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// selector is the choice of queued mail cancel and bounce act on: one
// message, a domain (or a domain/binding pair), or a sender.
type selector struct {
	id, domain, binding, sender string
}

func (s *selector) flags(f *pflag.FlagSet, idFlag string) {
	f.StringVar(&s.id, idFlag, "", "this message (queue id)")
	f.StringVar(&s.domain, "domain", "", "the recipients at this domain (other recipients go on)")
	f.StringVar(&s.binding, "binding", "", "with --domain: only the mail queued from this binding (the pair)")
	f.StringVar(&s.sender, "sender", "", "the messages from this envelope sender")
}

// request adds the chosen mail to req, or says what is wrong.
func (s *selector) request(req map[string]any) error {
	set := 0
	for _, v := range []string{s.id, s.domain, s.sender} {
		if v != "" {
			set++
		}
	}
	switch {
	case set != 1:
		return usagef("choose the mail with exactly one of the id, --domain or --sender")
	case s.binding != "" && s.domain == "":
		return usagef("--binding goes with --domain (the pair)")
	case s.id != "":
		req["queue_id"] = s.id
	case s.domain != "":
		req["domain"] = s.domain
		if s.binding != "" {
			req["binding"] = s.binding
		}
	default:
		req["sender"] = s.sender
	}
	return nil
}

// count decodes the {"<key>": n} answer of an action.
func count(name, key string, b []byte) (int, error) {
	var r map[string]*int
	if err := json.Unmarshal(b, &r); err != nil || r[key] == nil {
		return 0, fmt.Errorf("%s: the answer has no count: %q", name, b)
	}
	return *r[key], nil
}

// cancelCmd: cancel (--queue-id ID | --domain D [--binding B] | --sender S) --reason WHY [--dsn].
func (a *app) cancelCmd() *cobra.Command {
	var sel selector
	var dsn bool
	var by, reason string
	cmd := &cobra.Command{
		Use:   "cancel (--queue-id ID | --domain D [--binding B] | --sender S) --reason WHY [--dsn] [--by WHO]",
		Short: "end queued recipients now (logged as cancelled)",
		Long: `End the chosen queued recipients now, logged as cancelled. A domain's (or
a pair's) leaves the messages' other recipients queued; --dsn tells the sender.`,
		Args: nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]any{"reason": reason, "by": by, "dsn": dsn}
			if err := sel.request(req); err != nil {
				return err
			}
			if reason == "" {
				return usagef("--reason is required: every cancelled recipient's log record carries it")
			}
			_, b, done, err := a.send(http.MethodPost, "/api/v1/cancel", req)
			if done {
				return err
			}
			n, err := count("cancel", "cancelled", b)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.out, "cancelled %d recipient%s\n", n, plural(n))
			return err
		},
	}
	f := cmd.Flags()
	sel.flags(f, "queue-id")
	f.BoolVar(&dsn, "dsn", false, "send the sender a DSN reporting the cancelled recipients as failed")
	byFlag(f, &by)
	reasonFlag(f, &reason)
	return cmd
}

// bounceCmd: bounce (--queue-id ID | --domain D [--binding B] | --sender S) --reason WHY.
func (a *app) bounceCmd() *cobra.Command {
	var sel selector
	var by, reason string
	cmd := &cobra.Command{
		Use:   "bounce (--queue-id ID | --domain D [--binding B] | --sender S) --reason WHY [--by WHO]",
		Short: "fail queued recipients now, with a DSN to the sender",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]any{"reason": reason, "by": by}
			if err := sel.request(req); err != nil {
				return err
			}
			if reason == "" {
				return usagef("--reason is required: the DSN and every bounced recipient's log record carry it")
			}
			_, b, done, err := a.send(http.MethodPost, "/api/v1/bounce", req)
			if done {
				return err
			}
			n, err := count("bounce", "bounced", b)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.out, "bounced %d recipient%s\n", n, plural(n))
			return err
		},
	}
	f := cmd.Flags()
	sel.flags(f, "queue-id")
	byFlag(f, &by)
	reasonFlag(f, &reason)
	return cmd
}

// flushCmd: flush [DOMAIN] [--binding B] [--by WHO].
func (a *app) flushCmd() *cobra.Command {
	var binding, by string
	cmd := &cobra.Command{
		Use:   "flush [DOMAIN] [--binding B] [--by WHO]",
		Short: "retry delayed mail now; no DOMAIN is every domain",
		Args:  nargs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]string{"binding": binding, "by": by}
			if len(args) == 1 {
				req["domain"] = args[0]
			}
			_, b, done, err := a.send(http.MethodPost, "/api/v1/flush", req)
			if done {
				return err
			}
			n, err := count("flush", "flushed", b)
			if err != nil {
				return err
			}
			noun := "deliveries"
			if n == 1 {
				noun = "delivery"
			}
			_, err = fmt.Fprintf(a.out, "flushed %d delayed %s: retried now\n", n, noun)
			return err
		},
	}
	cmd.Flags().StringVar(&binding, "binding", "", "flush the mail queued from this binding only")
	byFlag(cmd.Flags(), &by)
	return cmd
}

// rebindCmd: rebind --domain D [--binding B] --group G [--duration D] --reason WHY.
func (a *app) rebindCmd() *cobra.Command {
	var domain, binding, group, duration, by, reason string
	cmd := &cobra.Command{
		Use:   "rebind --domain D [--binding B] --group G [--duration 1h] --reason WHY [--by WHO]",
		Short: "move a domain's (or pair's) queued mail to another binding group",
		Long: `Move the queued mail of a domain, or of a pair with --binding, to the binding
group --group; with --duration, new mail of that domain/pair goes there too
until it ends.`,
		Args: nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if domain == "" || group == "" || reason == "" {
				return usagef("--domain, --group and --reason are required")
			}
			req := map[string]string{"domain": domain, "group": group, "reason": reason, "by": by}
			if binding != "" {
				req["binding"] = binding
			}
			if duration != "" {
				req["duration"] = duration
			}
			_, b, done, err := a.send(http.MethodPost, "/api/v1/rebind", req)
			if done {
				return err
			}
			var r struct {
				Moved *int   `json:"moved"`
				Until string `json:"until"`
			}
			if err := json.Unmarshal(b, &r); err != nil || r.Moved == nil {
				return fmt.Errorf("rebind: the answer has no count: %q", b)
			}
			msg := fmt.Sprintf("moved %d queued deliver%s to group %s", *r.Moved, map[bool]string{true: "y", false: "ies"}[*r.Moved == 1], group)
			if r.Until != "" && !strings.HasPrefix(r.Until, "0001-") {
				msg += "; new mail goes there until " + r.Until
			}
			_, err = fmt.Fprintln(a.out, msg)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&domain, "domain", "", "the domain whose mail moves")
	f.StringVar(&binding, "binding", "", "only the mail queued from this binding (the pair)")
	f.StringVar(&group, "group", "", "the binding group the mail moves to")
	f.StringVar(&duration, "duration", "", "keep routing new mail there this long, e.g. 1h")
	byFlag(f, &by)
	reasonFlag(f, &reason)
	return cmd
}

// reloadResult is POST /api/v1/reload's answer (and, on a refusal, its
// "result").
type reloadResult struct {
	OK             bool     `json:"ok"`
	Error          string   `json:"error"`
	Applied        []string `json:"applied"`
	NeedingRestart []string `json:"needing_restart"`
	At             string   `json:"at"`
}

// reloadCmd: reload [--reason WHY] [--by WHO].
func (a *app) reloadCmd() *cobra.Command {
	var by, reason string
	cmd := &cobra.Command{
		Use:   "reload [--reason WHY] [--by WHO]",
		Short: "re-read the config and apply what can be applied (as SIGHUP)",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A refusal (422) is an *apiError carrying the daemon's
			// reason: printed, exit 1, and the old config stays.
			_, b, done, err := a.send(http.MethodPost, "/api/v1/reload", map[string]string{"by": by, "reason": reason})
			if done {
				return err
			}
			var r reloadResult
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("reload: the answer is not a reload result: %w", err)
			}
			if r.Error != "" {
				return fmt.Errorf("reload refused: %s", r.Error)
			}
			rows := [][]string{{"applied", strings.Join(r.Applied, " ")}, {"needing restart", strings.Join(r.NeedingRestart, "; ")}}
			return writeTable(a.out, []string{"RELOADED", orNow(r.At)}, rows)
		},
	}
	byFlag(cmd.Flags(), &by)
	reasonFlag(cmd.Flags(), &reason)
	return cmd
}

func orNow(s string) string {
	if s == "" {
		return "now"
	}
	return s
}

// quarantineCmd: quarantine list | show ID [--body] | reinject ID --reason R | delete ID --reason R.
func (a *app) quarantineCmd() *cobra.Command {
	parent := &cobra.Command{
		Use:   "quarantine list|show|reinject|delete",
		Short: "the messages the spool could not load at start-up",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("want a subcommand: list, show ID, reinject ID or delete ID")
		},
	}
	var limit int
	var after string
	list := &cobra.Command{
		Use:   "list [--limit N] [--after ID]",
		Short: "the quarantined messages, in queue id order, as their meta record gives them (show says whether one is readable)",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := url.Values{"limit": {strconv.Itoa(limit)}}
			if after != "" {
				v.Set("after", after)
			}
			b, done, err := a.get("/api/v1/quarantine?" + v.Encode())
			if done {
				return err
			}
			return printQuarantine(a.out, b)
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (the API's cap is 1000)")
	list.Flags().StringVar(&after, "after", "", "the messages after this queue id (the last one listed: paging)")
	parent.AddCommand(list)
	parent.AddCommand(a.showCmd("/api/v1/quarantine/", "quarantine",
		"one quarantined message: what is readable of it (--body: its content)", "print the message's content as stored"))
	for _, v := range []struct{ verb, past, method, short string }{
		{"reinject", "reinjected", http.MethodPost, "restore a quarantined message to the queue, to be delivered"},
		{"delete", "deleted", http.MethodDelete, "remove a quarantined message from the spool for good"},
	} {
		var by, reason string
		c := &cobra.Command{
			Use:   v.verb + " ID --reason WHY [--by WHO]",
			Short: v.short,
			Args:  nargs(1, 1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if reason == "" {
					return usagef("--reason is required: the log record carries it")
				}
				p := "/api/v1/quarantine/" + url.PathEscape(args[0])
				var body any
				if v.method == http.MethodPost {
					p += "/reinject"
					body = map[string]string{"by": by, "reason": reason}
				} else {
					p += actorQuery(nil, by, reason)
				}
				_, _, done, err := a.send(v.method, p, body)
				if done {
					return err
				}
				_, err = fmt.Fprintf(a.out, "%s %s\n", v.past, args[0])
				return err
			},
		}
		byFlag(c.Flags(), &by)
		reasonFlag(c.Flags(), &reason)
		parent.AddCommand(c)
	}
	return parent
}

// str prints a JSON value for a table cell: nothing for null.
func str(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case float64:
		return fmt.Sprint(int64(v))
	case []any:
		return fmt.Sprint(len(v))
	}
	return fmt.Sprint(v)
}

// cut shortens s to n runes, marking the cut.
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// printQuarantine renders GET /api/v1/quarantine's page:
// {"items":[admin.Quarantined],"next":"QUEUE-ID"|""}. The list reads meta
// records only, so META says whether the envelope is known; REASON is
// why not.
func printQuarantine(out io.Writer, b []byte) error {
	var p struct {
		Items []map[string]any `json:"items"`
		Next  string           `json:"next"`
	}
	if err := json.Unmarshal(b, &p); err != nil || p.Items == nil {
		return fmt.Errorf("quarantine: the answer is not a quarantine list: %q", b)
	}
	rows := make([][]string, 0, len(p.Items))
	for _, e := range p.Items {
		rows = append(rows, []string{str(e["queue_id"]), str(e["meta_readable"]), str(e["sender"]),
			str(e["recipients"]), str(e["size"]), cut(str(e["reason"]), 60)})
	}
	if err := writeTable(out, []string{"ID", "META", "SENDER", "RCPTS", "SIZE", "REASON"}, rows); err != nil {
		return err
	}
	if p.Next != "" {
		_, err := fmt.Fprintf(out, "(--after %s for the next ones)\n", p.Next)
		return err
	}
	return nil
}
