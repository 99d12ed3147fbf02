package main

// The queue views: queue-summary (Momentum's and KumoMTA's name for it),
// domain, binding, and the queued messages (message list, message show).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/net/idna"
)

// queuesQuery is GET /api/v1/queues's parameters.
type queuesQuery struct {
	by, sort                  string
	asc                       bool
	limit, offset             int
	domain, provider, binding string
}

func (q *queuesQuery) flags(f *pflag.FlagSet, filters bool) {
	f.StringVar(&q.by, "by", "domain", "one row per domain, site, binding or pair")
	f.StringVar(&q.sort, "sort", "active", "order by active, delayed, connections, oldest, deferred, bounced or name")
	f.BoolVar(&q.asc, "asc", false, "smallest first (default: largest first)")
	f.IntVar(&q.limit, "limit", 50, "at most this many rows (the API's cap is 1000)")
	f.IntVar(&q.offset, "offset", 0, "skip this many rows first (paging)")
	if filters {
		f.StringVar(&q.domain, "domain", "", `only the domains matching this glob, e.g. "*.example.com"`)
		f.StringVar(&q.provider, "provider", "", "only this provider's domains")
		f.StringVar(&q.binding, "binding", "", "only the mail queued from this binding")
	}
}

// check refuses, before any request, what the API would refuse: a page
// of no rows or a negative offset.
func (q *queuesQuery) check() error {
	if q.limit < 1 {
		return usagef("--limit %d: want at least 1", q.limit)
	}
	if q.offset < 0 {
		return usagef("--offset %d: want 0 or more", q.offset)
	}
	return nil
}

func (q *queuesQuery) path() string {
	v := url.Values{"by": {q.by}, "sort": {q.sort}, "limit": {strconv.Itoa(q.limit)}, "offset": {strconv.Itoa(q.offset)}}
	if q.asc {
		v.Set("order", "asc")
	}
	for k, s := range map[string]string{"domain": q.domain, "provider": q.provider, "binding": q.binding} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return "/api/v1/queues?" + v.Encode()
}

// queueItem is one row of GET /api/v1/queues.
type queueItem struct {
	Domain        string  `json:"domain"`
	Site          string  `json:"site"`
	Binding       string  `json:"binding"`
	Provider      string  `json:"provider"`
	Active        int64   `json:"active"`
	Delayed       int64   `json:"delayed"`
	Connections   int64   `json:"connections"`
	OldestSeconds float64 `json:"oldest_seconds"`
	Deferred      int64   `json:"deferred"`
	Bounced       int64   `json:"bounced"`
	LastReply     *struct {
		At       string `json:"at"`
		Code     int    `json:"code"`
		Enhanced string `json:"enhanced"`
		Text     string `json:"text"`
	} `json:"last_reply"`
	Suspension *struct {
		ID    string `json:"id"`
		Until string `json:"until"`
	} `json:"suspension"`
	Throttle *struct {
		Scope string `json:"scope"`
		Rate  string `json:"rate"`
		Until string `json:"until"`
	} `json:"throttle"`
}

type queuePage struct {
	By     string      `json:"by"`
	Total  int         `json:"total"`
	Offset int         `json:"offset"`
	Items  []queueItem `json:"items"`
}

// printQueues renders a page of GET /api/v1/queues: the key column(s) of
// the view, then the counts, the last reply cut to fit, and the state.
func printQueues(out io.Writer, b []byte) error {
	var p queuePage
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("queues: the answer is not a queue page: %w", err)
	}
	var keys []string
	switch p.By {
	case "site":
		keys = []string{"SITE"}
	case "binding":
		keys = []string{"BINDING"}
	case "pair":
		keys = []string{"DOMAIN", "BINDING"}
	default:
		keys = []string{"DOMAIN"}
	}
	rows := make([][]string, 0, len(p.Items))
	for _, it := range p.Items {
		var r []string
		for _, k := range keys {
			r = append(r, map[string]string{"SITE": it.Site, "BINDING": it.Binding, "DOMAIN": it.Domain}[k])
		}
		reply := ""
		if lr := it.LastReply; lr != nil {
			// A local error (no connection) has no reply code: the API
			// gives 0, and only the enhanced code is shown.
			code := ""
			if lr.Code != 0 {
				code = strconv.Itoa(lr.Code)
			}
			reply = cut(strings.Join(strings.Fields(code+" "+lr.Enhanced+" "+lr.Text), " "), 40)
		}
		var state []string
		if it.Suspension != nil {
			state = append(state, "suspended")
		}
		if it.Throttle != nil {
			state = append(state, "throttled")
		}
		r = append(r, it.Provider, itoa(it.Active), itoa(it.Delayed), itoa(it.Connections), age(it.OldestSeconds),
			itoa(it.Deferred), itoa(it.Bounced), reply, strings.Join(state, ","))
		rows = append(rows, r)
	}
	head := append(keys, "PROVIDER", "ACTIVE", "DELAYED", "CONNS", "OLDEST", "DEFERRED", "BOUNCED", "LAST REPLY", "STATE")
	if err := writeTable(out, head, rows); err != nil {
		return err
	}
	if shown := p.Offset + len(p.Items); shown < p.Total {
		_, err := fmt.Fprintf(out, "(%d-%d of %d; --offset %d for more)\n", p.Offset+1, shown, p.Total, shown)
		return err
	}
	return nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// age prints seconds for people: "45s", "12m", "3h05m", "2d04h"; "" for none.
func age(sec float64) string {
	if sec <= 0 {
		return ""
	}
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// isNotFound reports whether err is the API's 404 (an endpoint the daemon
// does not have, or an unknown id).
func isNotFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.code == http.StatusNotFound
}

// queues prints one page of the queue view.
func (a *app) queues(q *queuesQuery) error {
	if err := q.check(); err != nil {
		return err
	}
	b, done, err := a.get(q.path())
	if done {
		return err
	}
	return printQueues(a.out, b)
}

// queueSummaryCmd: queue-summary [--by ...] [--sort ...] [filters].
func (a *app) queueSummaryCmd() *cobra.Command {
	var q queuesQuery
	cmd := &cobra.Command{
		Use:     "queue-summary [--by domain|site|binding|pair] [--sort KEY] [--asc] [--limit N] [--offset N] [--domain GLOB] [--provider P] [--binding B]",
		Aliases: []string{"queues"},
		Short:   "the queues: active, delayed, connections, oldest, last reply, state",
		Args:    nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := a.queues(&q)
			if isNotFound(err) && q.by == "domain" && q.domain == "" && q.provider == "" && q.binding == "" {
				// A daemon without the queue view (older than it) still
				// has the summary's queue part.
				fmt.Fprintln(a.errOut, "mtactl: this daemon has no /api/v1/queues; its summary instead")
				b, done, err := a.get("/api/v1/summary")
				if done {
					return err
				}
				return printSummary(a.out, b)
			}
			return err
		},
	}
	q.flags(cmd.Flags(), true)
	return cmd
}

// domainCmd: domain NAME = queue-summary --by pair --domain NAME, then
// the shaping of NAME.
func (a *app) domainCmd() *cobra.Command {
	var q queuesQuery
	cmd := &cobra.Command{
		Use:   "domain NAME",
		Short: "one domain: its queue per binding, and its shaping",
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// NAME is one domain: the queue view takes a glob, and
			// "domain '*'" would list every domain, then fail on the
			// shaping of a domain named "*".
			if strings.ContainsAny(args[0], globChars) {
				return usagef("NAME %q: a domain name, not a pattern (queue-summary --domain GLOB takes patterns)", args[0])
			}
			q.by, q.domain = "pair", args[0]
			if err := a.queues(&q); err != nil {
				return err
			}
			fmt.Fprintln(a.out)
			b, done, err := a.get(shapingPath(args[0], q.binding))
			if done {
				return err
			}
			return printShaping(a.out, b)
		},
	}
	q.flags(cmd.Flags(), false)
	cmd.Flags().StringVar(&q.binding, "binding", "", "only this binding's queue (and its shaping)")
	_ = cmd.Flags().MarkHidden("by")
	return cmd
}

// globChars are the characters of a domain pattern (path.Match's).
const globChars = "*?[]\\"

// aLabels converts an internationalised domain name to its A-labels
// (bücher.test → xn--bcher-kva.test), the form the queues are keyed by;
// an ASCII name is returned as given.
func aLabels(d string) (string, error) {
	for _, r := range d {
		if r >= utf8.RuneSelf {
			return idna.Lookup.ToASCII(d)
		}
	}
	return d, nil
}

// bindingCmd: binding NAME = queue-summary --by pair --binding NAME.
func (a *app) bindingCmd() *cobra.Command {
	var q queuesQuery
	cmd := &cobra.Command{
		Use:   "binding NAME",
		Short: "one binding: the queue of each domain it sends to",
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q.by, q.binding = "pair", args[0]
			return a.queues(&q)
		},
	}
	q.flags(cmd.Flags(), false)
	cmd.Flags().StringVar(&q.domain, "domain", "", `only the domains matching this glob`)
	_ = cmd.Flags().MarkHidden("by")
	return cmd
}

// messageCmd: message list ... | message show ID [--body].
func (a *app) messageCmd() *cobra.Command {
	parent := &cobra.Command{
		Use:     "message list|show",
		Aliases: []string{"messages"},
		Short:   "the queued messages of a domain, pair or sender; one message in detail",
		Args:    cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("want a subcommand: list or show ID")
		},
	}
	var domain, binding, sender, after string
	var limit int
	list := &cobra.Command{
		Use:   "list (--domain D [--binding B] | --sender S) [--limit N] [--after ID]",
		Short: "the queued messages, in queue id (arrival) order",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (domain == "") == (sender == "") || (binding != "" && domain == "") {
				return usagef("choose the mail with --domain D [--binding B] or --sender S")
			}
			if limit < 1 {
				return usagef("--limit %d: want at least 1", limit)
			}
			// The API (admin/messages.go) matches the queue's key, the
			// A-label: convert here so that bücher.test finds its mail.
			d, err := aLabels(domain)
			if err != nil {
				return usagef("--domain %q: not a valid internationalised domain name: %v", domain, err)
			}
			domain = d
			v := url.Values{"limit": {strconv.Itoa(limit)}}
			for k, s := range map[string]string{"domain": domain, "binding": binding, "sender": sender, "after": after} {
				if s != "" {
					v.Set(k, s)
				}
			}
			b, done, err := a.get("/api/v1/messages?" + v.Encode())
			if done {
				return err
			}
			return printMessages(a.out, b)
		},
	}
	f := list.Flags()
	f.StringVar(&domain, "domain", "", "the messages with recipients queued at this domain")
	f.StringVar(&binding, "binding", "", "with --domain: queued from this binding only (the pair)")
	f.StringVar(&sender, "sender", "", "the messages from this envelope sender")
	f.IntVar(&limit, "limit", 100, "at most this many (the API's cap is 1000)")
	f.StringVar(&after, "after", "", "the messages after this queue id (the last one listed: paging)")
	parent.AddCommand(list)

	parent.AddCommand(a.showCmd("/api/v1/messages/", "message",
		"one queued message: envelope, recipients, attempts, headers (--body: the message)", "print the message itself (RFC 5322), streamed"))
	return parent
}

// showCmd is "show ID [--body]" under a listing's parent (message,
// quarantine): the document at prefix+ID for people (--json: as the API
// gives it), or with --body the message streamed from prefix+ID+"/body".
func (a *app) showCmd(prefix, kind, short, bodyHelp string) *cobra.Command {
	var body bool
	show := &cobra.Command{
		Use:   "show ID [--body]",
		Short: short,
		Args:  nargs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := prefix + url.PathEscape(args[0])
			if body {
				return a.stream(p + "/body")
			}
			b, done, err := a.get(p)
			if done {
				return err
			}
			return printDoc(a.out, kind, b)
		},
	}
	show.Flags().BoolVar(&body, "body", false, bodyHelp)
	return show
}

// printMessages renders GET /api/v1/messages's page:
// {"items":[{queue_id,...}],"next":"QUEUE-ID"|""}.
func printMessages(out io.Writer, b []byte) error {
	var p struct {
		Items []map[string]any `json:"items"`
		Next  string           `json:"next"`
	}
	if err := json.Unmarshal(b, &p); err != nil || p.Items == nil {
		return fmt.Errorf("messages: the answer is not a message list: %q", b)
	}
	rows := make([][]string, 0, len(p.Items))
	for _, m := range p.Items {
		rows = append(rows, []string{str(m["queue_id"]), str(m["domain"]), str(m["state"]), str(m["sender"]),
			str(m["arrival"]), str(m["size"]), str(m["recipients"]), str(m["attempts"]), str(m["next_attempt"])})
	}
	if err := writeTable(out, []string{"QUEUE ID", "DOMAIN", "STATE", "SENDER", "ARRIVAL", "SIZE", "RCPTS", "ATTEMPTS", "NEXT ATTEMPT"}, rows); err != nil {
		return err
	}
	if p.Next != "" {
		_, err := fmt.Fprintf(out, "(--after %s for the next ones)\n", p.Next)
		return err
	}
	return nil
}
