package admin

// GET /api/v1/queues: the queues by domain, site, binding or
// domain/binding pair (issue 11), what the status page and `mtactl
// queues` show. The API reads and checks the query string's form (numbers,
// order) and passes the rest to the Queues the daemon plugs in (the
// scheduler), which refuses what it cannot answer with an error naming
// the parameter (a *ParamError).
//
//	GET /api/v1/queues?by=domain|site|binding|pair&sort=&order=asc|desc&limit=&offset=&domain=&provider=&binding=
//	→ {"by","total","offset","limit","items":[{"domain"|"site"|"binding", "provider", "active", "delayed",
//	   "connections", "oldest_seconds", "deferred", "bounced", "bounce_classes", "last_reply", "suspension",
//	   "throttle"}]}

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Queues is what the queue and message views need from the daemon;
// cmd/mtad plugs the scheduler in. The results are JSON-encodable values
// in the endpoints' shapes. Every method is safe for concurrent use.
type Queues interface {
	// QueueView answers GET /api/v1/queues; a query it refuses is an
	// error wrapping ErrBadQuery, whose text starts with the parameter.
	QueueView(q QueueQuery) (any, error)
	// Messages answers GET /api/v1/messages, refusing as QueueView does.
	Messages(q MessageQuery) (any, error)
	// Message answers GET /api/v1/messages/{id}; an id the spool does not
	// have is an error wrapping ErrNotQueued.
	Message(id string) (any, error)
	// MessageBody opens the message's body and reports its size; the
	// caller closes it. An unknown id is as for Message.
	MessageBody(id string) (io.ReadCloser, int64, error)
}

// QueueQuery is a queues view request, as the query string gave it.
type QueueQuery struct {
	By, Sort string // "" = the Queues' defaults (domain, active)
	Desc     bool
	Limit    int // 0 = the default (50)
	Offset   int
	Domain   string // a glob on domain names ("*.example.com")
	Provider string
	Binding  string
}

// ErrBadQuery is wrapped by a Queues method's error for a query it
// refuses: the API answers 400 with the error's text.
var ErrBadQuery = errors.New("bad query")

// ParamError is a refused query parameter; it wraps ErrBadQuery and its
// text is "param: msg", the API's error shape.
type ParamError struct{ Param, Msg string }

func (e *ParamError) Error() string { return e.Param + ": " + e.Msg }

// Is makes errors.Is(err, ErrBadQuery) true.
func (e *ParamError) Is(target error) bool { return target == ErrBadQuery }

// intParam reads a non-negative integer parameter; absent is def.
func intParam(v url.Values, name string, def int) (int, error) {
	s := v.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, &ParamError{name, strconv.Quote(s) + " is not a non-negative integer"}
	}
	return n, nil
}

// parseQueueQuery reads a queues view's query string; what only the
// scheduler can judge (by, sort, the glob, names) is passed on as given.
func parseQueueQuery(v url.Values) (QueueQuery, error) {
	q := QueueQuery{By: v.Get("by"), Sort: v.Get("sort"), Domain: v.Get("domain"),
		Provider: v.Get("provider"), Binding: v.Get("binding"), Desc: true}
	switch o := v.Get("order"); o {
	case "", "desc":
	case "asc":
		q.Desc = false
	default:
		return q, &ParamError{"order", strconv.Quote(o) + " is not asc or desc"}
	}
	var err error
	if q.Domain, err = aLabelPattern(q.Domain); err != nil {
		return q, err
	}
	if q.Limit, err = intParam(v, "limit", 50); err != nil {
		return q, err
	}
	if q.Limit == 0 {
		return q, &ParamError{"limit", "must be at least 1"}
	}
	if q.Offset, err = intParam(v, "offset", 0); err != nil {
		return q, err
	}
	return q, nil
}

// aLabelPattern converts the labels of a domain or domain glob to
// A-labels (bücher.test → xn--bcher-kva.test, *.bücher.test →
// *.xn--bcher-kva.test): the queues are keyed by A-labels, as suspend and
// shaping resolve convert them, and a U-label pattern would match
// nothing and say nothing. ASCII labels, "*" among them, pass as given;
// a label with both non-ASCII letters and glob characters cannot be
// converted and is refused.
func aLabelPattern(p string) (string, error) {
	labels := strings.Split(p, ".")
	changed := false
	for i, l := range labels {
		ascii := true
		for j := 0; j < len(l); j++ {
			if l[j] >= utf8.RuneSelf {
				ascii = false
				break
			}
		}
		if ascii {
			continue
		}
		if strings.ContainsAny(l, "*?[]\\") {
			return "", &ParamError{"domain", strconv.Quote(l) + " mixes non-ASCII letters and glob characters; write the label as its A-label (xn--…)"}
		}
		a, err := idna.Lookup.ToASCII(l)
		if err != nil {
			return "", &ParamError{"domain", strconv.Quote(l) + " is not a valid internationalised domain label: " + err.Error()}
		}
		labels[i], changed = a, true
	}
	if !changed {
		return p, nil
	}
	return strings.Join(labels, "."), nil
}

// queues serves GET /api/v1/queues.
func (s *Server) queues(w http.ResponseWriter, r *http.Request) {
	q, err := parseQueueQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	page, err := s.opts.Queues.QueueView(q)
	writeQueuesAnswer(w, "", page, err)
}

// writeQueuesAnswer writes a Queues method's answer: 400 for a refused
// query, 404 for an unknown id, 500 for anything else.
func writeQueuesAnswer(w http.ResponseWriter, id string, v any, err error) {
	var pe *ParamError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.As(err, &pe):
		writeError(w, http.StatusBadRequest, pe.Error())
	case errors.Is(err, ErrBadQuery):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotQueued):
		writeError(w, http.StatusNotFound, "id: "+strconv.Quote(id)+" is not spooled")
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}
