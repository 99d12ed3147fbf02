package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

// summaryCounts is one set of counts of GET /api/v1/summary.
type summaryCounts struct {
	Received           int64 `json:"received"`
	ReceivedRecipients int64 `json:"received_recipients"`
	Delivered          int64 `json:"delivered"`
	Deferred           int64 `json:"deferred"`
	Bounced            int64 `json:"bounced"`
	Expired            int64 `json:"expired"`
	Cancelled          int64 `json:"cancelled"`
}

// summary is GET /api/v1/summary's answer.
type summary struct {
	Time             time.Time     `json:"time"`
	Since            time.Time     `json:"since"`
	Totals           summaryCounts `json:"totals"`
	LastMinute       summaryCounts `json:"last_minute"`
	QueuedMessages   int64         `json:"queued_messages"`
	QueuedRecipients int64         `json:"queued_recipients"`
	Connections      int64         `json:"connections"`
	MaxConnections   int64         `json:"max_connections"`
	SpoolBytes       *uint64       `json:"spool_bytes"`
	SpoolFreeBytes   *uint64       `json:"spool_free_bytes"`
	Suspensions      int64         `json:"suspensions"`
}

// summaryCmd: summary. The counts as a table (total since start, the
// last minute, and that minute as a rate per second), then the state of
// the moment, one line each.
func (a *app) summaryCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "summary",
		Short: "totals and last-minute counts, queue, connections, spool, suspensions",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get("/api/v1/summary")
			if done {
				return err
			}
			return printSummary(a.out, b)
		},
	}
}

// printSummary renders GET /api/v1/summary's answer.
func printSummary(out io.Writer, b []byte) error {
	var s summary
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("summary: the answer is not a summary: %w", err)
	}
	t, m := s.Totals, s.LastMinute
	var rows [][]string
	for _, r := range []struct {
		name        string
		total, last int64
	}{
		{"received messages", t.Received, m.Received},
		{"received recipients", t.ReceivedRecipients, m.ReceivedRecipients},
		{"delivered", t.Delivered, m.Delivered},
		{"deferred", t.Deferred, m.Deferred},
		{"bounced", t.Bounced, m.Bounced},
		{"expired", t.Expired, m.Expired},
		{"cancelled", t.Cancelled, m.Cancelled},
	} {
		rows = append(rows, []string{r.name, strconv.FormatInt(r.total, 10), strconv.FormatInt(r.last, 10),
			strconv.FormatFloat(float64(r.last)/60, 'f', 2, 64)})
	}
	if err := writeTable(out, []string{"EVENT", "TOTAL", "LAST MINUTE", "PER SECOND"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(out)
	spool := "unknown"
	if s.SpoolBytes != nil && s.SpoolFreeBytes != nil {
		spool = humanize.IBytes(*s.SpoolBytes) + " used, " + humanize.IBytes(*s.SpoolFreeBytes) + " free"
	}
	up := ""
	if !s.Since.IsZero() && !s.Time.IsZero() {
		up = " (" + s.Time.Sub(s.Since).Truncate(time.Second).String() + ")"
	}
	return writeTable(out, []string{"STATE", "NOW"}, [][]string{
		{"queued", fmt.Sprintf("%d messages, %d recipients", s.QueuedMessages, s.QueuedRecipients)},
		{"connections", fmt.Sprintf("%d of %d", s.Connections, s.MaxConnections)},
		{"spool", spool},
		{"suspensions", strconv.FormatInt(s.Suspensions, 10)},
		{"counting since", when(s.Since) + up},
	})
}
