package main

// The action commands on queued mail: cancel and flush. As every command,
// mtactl says early only what is surely missing; the API checks every
// field and names the bad one.

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
)

// cancelCmd: cancel (--queue-id ID | --domain D | --sender S) --reason WHY [--dsn] [--by WHO].
func cancelCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	id := fs.String("queue-id", "", "cancel this message")
	domain := fs.String("domain", "", "cancel the recipients at this domain (other recipients go on)")
	sender := fs.String("sender", "", "cancel the messages from this envelope sender")
	dsn := fs.Bool("dsn", false, "send the sender a DSN reporting the cancelled recipients as failed")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	by, reason := actorFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	set := 0
	for _, v := range []string{*id, *domain, *sender} {
		if v != "" {
			set++
		}
	}
	if len(pos) != 0 || set != 1 {
		return usagef("usage: cancel (--queue-id ID | --domain D | --sender S) --reason WHY [--dsn] [--by WHO]")
	}
	if *reason == "" {
		return usagef("--reason is required: every cancelled recipient's log record carries it")
	}
	req := map[string]any{"reason": *reason, "by": *by, "dsn": *dsn}
	switch {
	case *id != "":
		req["queue_id"] = *id
	case *domain != "":
		req["domain"] = *domain
	default:
		req["sender"] = *sender
	}
	_, b, err := c.do(http.MethodPost, "/api/v1/cancel", req)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return err
	}
	var r struct {
		Cancelled *int `json:"cancelled"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Cancelled == nil {
		return fmt.Errorf("cancel: the answer has no count: %q", b)
	}
	_, err = fmt.Fprintf(out, "cancelled %d recipient%s\n", *r.Cancelled, plural(*r.Cancelled))
	return err
}

// flushCmd: flush [DOMAIN] [--binding B] [--by WHO].
func flushCmd(c *client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("flush", flag.ContinueOnError)
	binding := fs.String("binding", "", "flush the mail queued from this binding only")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	by := fs.String("by", "", `who acts, for the log (default "operator")`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("usage: flush [DOMAIN] [--binding B] [--by WHO]; no DOMAIN flushes every domain")
	}
	req := map[string]string{"binding": *binding, "by": *by}
	if len(pos) == 1 {
		req["domain"] = pos[0]
	}
	_, b, err := c.do(http.MethodPost, "/api/v1/flush", req)
	if err != nil || *asJSON {
		if err == nil {
			_, err = out.Write(b)
		}
		return err
	}
	var r struct {
		Flushed *int `json:"flushed"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Flushed == nil {
		return fmt.Errorf("flush: the answer has no count: %q", b)
	}
	noun := "deliveries"
	if *r.Flushed == 1 {
		noun = "delivery"
	}
	_, err = fmt.Fprintf(out, "flushed %d delayed %s: retried now\n", *r.Flushed, noun)
	return err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
