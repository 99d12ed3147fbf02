package admin

// The action endpoints on queued mail: cancel (end recipients by queue
// id, domain or sender) and flush (retry delayed mail now). As with the
// policy endpoints, the API only checks the operator's input and names
// the first bad field; the Actions the daemon plugs in (the scheduler)
// applies the order and writes its log records, with who gave it.
//
//	POST /api/v1/cancel {"queue_id"|"domain"|"sender", "reason", "by", "dsn"} → {"cancelled": n}
//	POST /api/v1/flush  {"domain", "binding", "by"}                           → {"flushed": n}

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/mtad/mtad/internal/mx"
)

// Actions is what the action endpoints need from the daemon; cmd/mtad
// plugs the scheduler in. Every method is safe for concurrent use.
type Actions interface {
	// Cancel ends the queued recipients c chooses (exactly one of
	// QueueID, Domain in mx.Canonical form, Sender is set), logs each
	// with c.Reason and c.By, and returns how many it ended. A queue id
	// not queued is an error wrapping ErrNotQueued.
	Cancel(c CancelOrder) (int, error)
	// Flush queues now the delayed mail to domain ("" = all, else in
	// mx.Canonical form) from binding ("" = any, else a name HasBinding
	// knows), logs it with by, and returns how many deliveries it moved.
	Flush(domain, binding, by string) (int, error)
	// HasBinding reports whether name is a configured binding.
	HasBinding(name string) bool
}

// CancelOrder is a checked cancel request.
type CancelOrder struct {
	QueueID, Domain, Sender string
	Reason, By              string
	DSN                     bool // send the sender a DSN reporting the recipients failed
}

// ErrNotQueued is what Actions.Cancel's error wraps for a queue id that
// is not queued: the API answers 404.
var ErrNotQueued = errors.New("not queued")

type cancelRequest struct {
	QueueID string `json:"queue_id"`
	Domain  string `json:"domain"`
	Sender  string `json:"sender"`
	Reason  string `json:"reason"`
	By      string `json:"by"`
	DSN     bool   `json:"dsn"`
}

type flushRequest struct {
	Domain  string `json:"domain"`
	Binding string `json:"binding"`
	By      string `json:"by"`
}

// parseCancel reads a cancel request and checks every field, naming the
// first bad one; who is by when the request does not say.
func parseCancel(body []byte, who string) (CancelOrder, error) {
	var req cancelRequest
	if err := decodeStrict(body, &req); err != nil {
		return CancelOrder{}, err
	}
	for _, f := range []struct{ name, v string }{
		{"queue_id", req.QueueID}, {"domain", req.Domain}, {"sender", req.Sender},
		{"reason", req.Reason}, {"by", req.By},
	} {
		if err := checkText(f.v); err != nil {
			return CancelOrder{}, &fieldError{f.name, err.Error()}
		}
	}
	c := CancelOrder{QueueID: strings.TrimSpace(req.QueueID), Sender: strings.TrimSpace(req.Sender), DSN: req.DSN,
		Reason: strings.TrimSpace(req.Reason), By: byOf(map[string]string{"by": req.By}, who)}
	dom := strings.TrimSpace(req.Domain)
	var given []string
	for _, f := range []struct{ name, v string }{{"queue_id", c.QueueID}, {"domain", dom}, {"sender", c.Sender}} {
		if f.v != "" {
			given = append(given, f.name)
		}
	}
	switch len(given) {
	case 0:
		return c, &fieldError{"queue_id", "required: one of queue_id, domain or sender says what to cancel"}
	case 1:
	default:
		return c, &fieldError{given[1], fmt.Sprintf("given with %s: cancel by one of queue_id, domain or sender", given[0])}
	}
	switch {
	case dom != "":
		d, err := mx.Canonical(dom)
		if err != nil {
			return c, &fieldError{"domain", err.Error()}
		}
		c.Domain = d
	case c.Sender != "":
		at := strings.LastIndexByte(c.Sender, '@')
		if at <= 0 || at == len(c.Sender)-1 || strings.ContainsAny(c.Sender, " <>") {
			return c, &fieldError{"sender", fmt.Sprintf("%q is not an address such as news@example.com (the null sender's mail cannot be cancelled by sender)", c.Sender)}
		}
	}
	if c.Reason == "" {
		return c, &fieldError{"reason", "required: say why; every cancelled recipient's log record carries it"}
	}
	return c, nil
}

// parseFlush reads a flush request, naming the first bad field.
func parseFlush(body []byte, who string, hasBinding func(string) bool) (domain, binding, by string, err error) {
	var req flushRequest
	if err := decodeStrict(body, &req); err != nil {
		return "", "", "", err
	}
	if strings.TrimSpace(string(body))[0] != '{' {
		// JSON's null decodes to the empty request, which flushes
		// everything: only {} may say that.
		return "", "", "", &fieldError{"body", "must be a JSON object, not null"}
	}
	for _, f := range []struct{ name, v string }{{"domain", req.Domain}, {"binding", req.Binding}, {"by", req.By}} {
		if err := checkText(f.v); err != nil {
			return "", "", "", &fieldError{f.name, err.Error()}
		}
	}
	if d := strings.TrimSpace(req.Domain); d != "" {
		if domain, err = mx.Canonical(d); err != nil {
			return "", "", "", &fieldError{"domain", err.Error()}
		}
	}
	binding = strings.TrimSpace(req.Binding)
	if binding != "" && !hasBinding(binding) {
		return "", "", "", &fieldError{"binding", fmt.Sprintf("no binding %q", binding)}
	}
	return domain, binding, byOf(map[string]string{"by": req.By}, who), nil
}

// cancel serves POST /api/v1/cancel.
func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	c, err := parseCancel(body, Who(r))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := s.opts.Actions.Cancel(c)
	switch {
	case errors.Is(err, ErrNotQueued):
		writeError(w, http.StatusNotFound, fmt.Sprintf("queue_id: %q is not queued", c.QueueID))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"cancelled": n})
}

// flush serves POST /api/v1/flush.
func (s *Server) flush(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	domain, binding, by, err := parseFlush(body, Who(r), s.opts.Actions.HasBinding)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := s.opts.Actions.Flush(domain, binding, by)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"flushed": n})
}
