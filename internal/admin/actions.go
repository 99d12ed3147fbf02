package admin

// The action endpoints on queued mail: cancel and bounce (end recipients
// by queue id, domain, pair or sender), flush (retry delayed mail now) and
// rebind (move a domain's or pair's mail to another binding group). As
// with the policy endpoints, the API only checks the operator's input and
// names the first bad field; the Actions the daemon plugs in (the
// scheduler) applies the order and writes its log records, with who gave
// it.
//
//	POST /api/v1/cancel {"queue_id"|"domain"[+"binding"]|"sender", "reason", "by", "dsn"} → {"cancelled": n}
//	POST /api/v1/bounce {"queue_id"|"domain"[+"binding"]|"sender", "reason", "by"}        → {"bounced": n}
//	POST /api/v1/flush  {"domain", "binding", "by"}                                        → {"flushed": n}
//	POST /api/v1/rebind {"domain", "binding", "group", "duration", "reason", "by"}         → {"moved": n, "until": t}

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

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

// BounceRebinder is what the bounce and rebind endpoints need besides
// Actions: an Actions that has it serves them too (found by type
// assertion, so an Actions without, such as an older tool's test double,
// still serves cancel and flush).
type BounceRebinder interface {
	// Bounce ends the queued recipients c chooses as Cancel does, but as
	// bounces, always reporting them to the sender in a DSN (c.DSN is
	// not read). A queue id not queued is an error wrapping ErrNotQueued.
	Bounce(c CancelOrder) (int, error)
	// Rebind moves the queued mail of o.Domain (of the pair, with
	// o.Binding) to bindings of o.Group, and for o.Duration > 0 keeps the
	// domain's (pair's) new mail there; logs it with o.Reason and o.By
	// and returns how many deliveries it moved.
	Rebind(o RebindOrder) (int, error)
	// HasGroup reports whether name is a configured binding group with
	// a binding to send from.
	HasGroup(name string) bool
}

// RebindOrder is a checked rebind request.
type RebindOrder struct {
	Domain   string // mx.Canonical form
	Binding  string // "" = the whole domain, else a name HasBinding knows
	Group    string // a name HasGroup knows
	Duration time.Duration
	Until    time.Time // now + Duration; zero for Duration 0
	Reason   string
	By       string
}

// MaxRebind bounds an operator's rebind of new mail, as MaxSuspension
// does a suspension: a longer one belongs in the configuration.
const MaxRebind = 7 * 24 * time.Hour

// CancelOrder is a checked cancel or bounce request: exactly one of
// QueueID, Domain and Sender is set; Binding only with Domain (the pair).
type CancelOrder struct {
	QueueID, Domain, Binding, Sender string
	Reason, By                       string
	DSN                              bool // cancel only: send the sender a DSN reporting the recipients failed
}

// ErrNotQueued is what Actions.Cancel's error wraps for a queue id that
// is not queued: the API answers 404.
var ErrNotQueued = errors.New("not queued")

// The errors an Actions wraps for an order the API checked but the
// configuration no longer allows: a reload between the check and the
// order removed the binding or group it names. They are the operator's
// input gone stale, not the server's fault: the API answers 400 naming
// the field.
var (
	ErrUnknownBinding = errors.New("unknown binding")
	ErrUnknownGroup   = errors.New("unknown binding group")
	ErrBadSelector    = errors.New("bad selector")
)

// writeActionError answers an Actions' error: 404 for a queue id not
// queued, 400 naming the field for an order a reload made stale, 500 for
// the rest (the spool failed).
func writeActionError(w http.ResponseWriter, err error, queueID string) {
	switch {
	case errors.Is(err, ErrNotQueued):
		writeError(w, http.StatusNotFound, fmt.Sprintf("queue_id: %q is not queued", queueID))
	case errors.Is(err, ErrUnknownBinding):
		writeError(w, http.StatusBadRequest, "binding: not configured any more (a reload removed it): "+err.Error())
	case errors.Is(err, ErrUnknownGroup):
		writeError(w, http.StatusBadRequest, "group: not configured any more (a reload removed it): "+err.Error())
	case errors.Is(err, ErrBadSelector):
		writeError(w, http.StatusBadRequest, "selector: "+err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

type cancelRequest struct {
	QueueID string `json:"queue_id"`
	Domain  string `json:"domain"`
	Binding string `json:"binding"`
	Sender  string `json:"sender"`
	Reason  string `json:"reason"`
	By      string `json:"by"`
	DSN     *bool  `json:"dsn"` // a pointer: bounce refuses it, as it always sends one
}

type rebindRequest struct {
	Domain   string `json:"domain"`
	Binding  string `json:"binding"`
	Group    string `json:"group"`
	Duration string `json:"duration"`
	Reason   string `json:"reason"`
	By       string `json:"by"`
}

type flushRequest struct {
	Domain  string `json:"domain"`
	Binding string `json:"binding"`
	By      string `json:"by"`
}

// parseCancel reads a cancel (verb "cancel") or bounce request and
// checks every field, naming the first bad one; who is by when the
// request does not say.
func parseCancel(body []byte, who, verb string, hasBinding func(string) bool) (CancelOrder, error) {
	var req cancelRequest
	if err := decodeStrict(body, &req); err != nil {
		return CancelOrder{}, err
	}
	for _, f := range []struct{ name, v string }{
		{"queue_id", req.QueueID}, {"domain", req.Domain}, {"binding", req.Binding}, {"sender", req.Sender},
		{"reason", req.Reason}, {"by", req.By},
	} {
		if err := checkText(f.v); err != nil {
			return CancelOrder{}, &fieldError{f.name, err.Error()}
		}
	}
	c := CancelOrder{QueueID: strings.TrimSpace(req.QueueID), Sender: strings.TrimSpace(req.Sender),
		Binding: strings.TrimSpace(req.Binding), Reason: strings.TrimSpace(req.Reason), By: byOf(map[string]string{"by": req.By}, who)}
	if req.DSN != nil {
		if verb == "bounce" {
			return c, &fieldError{"dsn", "a bounce always sends the sender a DSN; cancel is the action without one"}
		}
		c.DSN = *req.DSN
	}
	dom := strings.TrimSpace(req.Domain)
	var given []string
	for _, f := range []struct{ name, v string }{{"queue_id", c.QueueID}, {"domain", dom}, {"sender", c.Sender}} {
		if f.v != "" {
			given = append(given, f.name)
		}
	}
	switch len(given) {
	case 0:
		return c, &fieldError{"queue_id", fmt.Sprintf("required: one of queue_id, domain or sender says what to %s", verb)}
	case 1:
	default:
		return c, &fieldError{given[1], fmt.Sprintf("given with %s: %s by one of queue_id, domain or sender", given[0], verb)}
	}
	if c.Binding != "" && dom == "" {
		return c, &fieldError{"binding", "only with domain: a binding and a domain name a pair"}
	}
	switch {
	case dom != "":
		d, err := mx.Canonical(dom)
		if err != nil {
			return c, &fieldError{"domain", err.Error()}
		}
		c.Domain = d
		if c.Binding != "" && !hasBinding(c.Binding) {
			return c, &fieldError{"binding", fmt.Sprintf("no binding %q", c.Binding)}
		}
	case c.Sender != "":
		at := strings.LastIndexByte(c.Sender, '@')
		if at <= 0 || at == len(c.Sender)-1 || strings.ContainsAny(c.Sender, " <>") {
			return c, &fieldError{"sender", fmt.Sprintf("%q is not an address such as news@example.com (the null sender's mail cannot be chosen by sender)", c.Sender)}
		}
	}
	if c.Reason == "" {
		return c, &fieldError{"reason", fmt.Sprintf("required: say why; every %s recipient's log record carries it", verb)}
	}
	return c, nil
}

// parseRebind reads a rebind request, naming the first bad field.
func parseRebind(body []byte, who string, now time.Time, hasBinding func(string) bool, a BounceRebinder) (RebindOrder, error) {
	var req rebindRequest
	if err := decodeStrict(body, &req); err != nil {
		return RebindOrder{}, err
	}
	for _, f := range []struct{ name, v string }{
		{"domain", req.Domain}, {"binding", req.Binding}, {"group", req.Group}, {"duration", req.Duration},
		{"reason", req.Reason}, {"by", req.By},
	} {
		if err := checkText(f.v); err != nil {
			return RebindOrder{}, &fieldError{f.name, err.Error()}
		}
	}
	o := RebindOrder{Binding: strings.TrimSpace(req.Binding), Group: strings.TrimSpace(req.Group),
		Reason: strings.TrimSpace(req.Reason), By: byOf(map[string]string{"by": req.By}, who)}
	dom := strings.TrimSpace(req.Domain)
	if dom == "" {
		return o, &fieldError{"domain", "required: the domain whose mail moves"}
	}
	d, err := mx.Canonical(dom)
	if err != nil {
		return o, &fieldError{"domain", err.Error()}
	}
	o.Domain = d
	if o.Binding != "" && !hasBinding(o.Binding) {
		return o, &fieldError{"binding", fmt.Sprintf("no binding %q", o.Binding)}
	}
	switch {
	case o.Group == "":
		return o, &fieldError{"group", "required: the binding group the mail moves to"}
	case !a.HasGroup(o.Group):
		return o, &fieldError{"group", fmt.Sprintf("no binding group %q with a binding to send from", o.Group)}
	}
	if ds := strings.TrimSpace(req.Duration); ds != "" {
		dur, err := time.ParseDuration(ds)
		switch {
		case err != nil:
			return o, &fieldError{"duration", fmt.Sprintf("%q is not a duration such as \"90m\" or \"2h\"", ds)}
		case dur < 0:
			return o, &fieldError{"duration", fmt.Sprintf("%q is negative", ds)}
		case dur > MaxRebind:
			return o, &fieldError{"duration", fmt.Sprintf("%q is longer than %s", ds, MaxRebind)}
		}
		o.Duration = dur
		if dur > 0 {
			o.Until = now.Add(dur)
		}
	}
	if o.Reason == "" {
		return o, &fieldError{"reason", "required: say why; the rebind's log record carries it"}
	}
	return o, nil
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
	s.end(w, r, "cancel", "cancelled", s.opts.Actions.Cancel)
}

// bounce serves POST /api/v1/bounce.
func (s *Server) bounce(w http.ResponseWriter, r *http.Request) {
	s.end(w, r, "bounce", "bounced", s.opts.Actions.(BounceRebinder).Bounce)
}

// end serves a cancel or a bounce: key names the count in the answer.
func (s *Server) end(w http.ResponseWriter, r *http.Request, verb, key string, do func(CancelOrder) (int, error)) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	c, err := parseCancel(body, Who(r), verb, s.opts.Actions.HasBinding)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := do(c)
	if err != nil {
		writeActionError(w, err, c.QueueID)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{key: n})
}

// rebind serves POST /api/v1/rebind.
func (s *Server) rebind(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	br := s.opts.Actions.(BounceRebinder)
	o, err := parseRebind(body, Who(r), time.Now(), s.opts.Actions.HasBinding, br)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := br.Rebind(o)
	if err != nil {
		writeActionError(w, err, "")
		return
	}
	out := struct {
		Moved int        `json:"moved"`
		Until *time.Time `json:"until,omitempty"`
	}{Moved: n}
	if !o.Until.IsZero() {
		out.Until = &o.Until
	}
	writeJSON(w, http.StatusOK, out)
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
		writeActionError(w, err, "")
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"flushed": n})
}
