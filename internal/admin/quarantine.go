package admin

// The quarantine endpoints: the messages the spool set aside at start
// because a record of theirs did not decode. An operator lists them, looks
// at one (and its body, when it is readable), re-injects one that is
// sound again, or deletes it. The Quarantine the daemon plugs in (spool
// and scheduler) does the work and writes the log record of a re-inject
// or delete, with who and why.
//
//	GET    /api/v1/quarantine?limit=&after=      → {"items":[entry],"next":"ID"|""}
//	GET    /api/v1/quarantine/{id}               → entry with its recipients
//	GET    /api/v1/quarantine/{id}/body          → the body, streamed (message/rfc822)
//	POST   /api/v1/quarantine/{id}/reinject      {"reason","by"} → {"reinjected": id}
//	DELETE /api/v1/quarantine/{id}?reason=&by=   → {"deleted": id}

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Quarantine is what the quarantine endpoints need from the daemon.
// Every method is safe for concurrent use; an id not in quarantine is an
// error wrapping ErrNotFound, a message whose records do not all decode
// one wrapping ErrUnreadable (for Body and Reinject), a Reinject of an id
// a live message has one wrapping ErrLive.
type Quarantine interface {
	// List returns up to limit (1..MaxQuarantineLimit) entries with ids
	// after after, in id order, and the id to ask after for the next page
	// ("" on the last). The entries say what their meta record gives:
	// whether the whole message is readable is Get's to say.
	List(limit int, after string) (QuarantinedPage, error)
	Get(id string) (Quarantined, error)
	// Body streams a readable message's body; the caller closes it.
	Body(id string) (io.ReadCloser, error)
	// Reinject moves the message back to the live spool and queues it,
	// logging it with by and reason.
	Reinject(id, by, reason string) error
	// Delete removes the message for good, logging it with by and reason.
	Delete(id, by, reason string) error
}

// Quarantined is one quarantined message as the API shows it: the
// envelope fields are known only when MetaReadable.
type Quarantined struct {
	QueueID      string           `json:"queue_id"`
	Checked      bool             `json:"checked"` // every record was read (show): readable is known
	Readable     bool             `json:"readable"`
	Reason       string           `json:"reason,omitempty"` // why not readable
	MetaReadable bool             `json:"meta_readable"`
	Sender       string           `json:"sender"`
	Recipients   int              `json:"recipients"`
	Size         int64            `json:"size"`
	Received     time.Time        `json:"received,omitzero"`
	MessageID    string           `json:"message_id,omitempty"`
	Rcpts        []QuarantineRcpt `json:"rcpts,omitempty"` // Get only, when readable
}

// QuarantinedPage is a page of the quarantine list.
type QuarantinedPage struct {
	Items []Quarantined `json:"items"`
	Next  string        `json:"next"`
}

// The list's page size: limit's default and most.
const (
	DefaultQuarantineLimit = 100
	MaxQuarantineLimit     = 1000
)

// QuarantineRcpt is one recipient of a readable quarantined message.
type QuarantineRcpt struct {
	Address  string `json:"address"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
}

// ErrNotFound is what Quarantine's errors wrap for an id not in
// quarantine: the API answers 404.
var ErrNotFound = errors.New("not in quarantine")

// ErrUnreadable is what Quarantine's errors wrap for a message whose
// records do not all decode: the API answers 409 with the reason.
var ErrUnreadable = errors.New("unreadable")

// ErrLive is what Reinject's error wraps when a live message already has
// the id: the API answers 409, as for an unreadable one.
var ErrLive = errors.New("a live message has the id")

// quarantineError answers a Quarantine error: 404, 409 or 500.
func quarantineError(w http.ResponseWriter, id string, err error) {
	switch {
	case errors.Is(err, ErrLive):
		writeError(w, http.StatusConflict, fmt.Sprintf("id: %q is live in the spool, not re-injected: %v", id, err))
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("id: %q is not in quarantine", id))
	case errors.Is(err, ErrUnreadable):
		writeError(w, http.StatusConflict, fmt.Sprintf("id: %q is not readable: %v", id, err))
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// quarantineID is the {id} of the path, checked as clean text.
func quarantineID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := checkText(id); err != nil || id == "" || strings.ContainsRune(id, '/') {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("id: %q is not a queue id", id))
		return "", false
	}
	return id, true
}

// quarantineList serves GET /api/v1/quarantine?limit=&after=, one page
// at a time: after a salvage thousands of messages may be quarantined.
func (s *Server) quarantineList(w http.ResponseWriter, r *http.Request) {
	q, err := params(r.URL.Query(), "limit", "after")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := intParam(r.URL.Query(), "limit", DefaultQuarantineLimit)
	if err == nil && (limit < 1 || limit > MaxQuarantineLimit) {
		err = &ParamError{"limit", fmt.Sprintf("%d is not between 1 and %d", limit, MaxQuarantineLimit)}
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	after := q["after"]
	if strings.ContainsRune(after, '/') {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("after: %q is not a queue id", after))
		return
	}
	page, err := s.opts.Quarantine.List(limit, after)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if page.Items == nil {
		page.Items = []Quarantined{}
	}
	writeJSON(w, http.StatusOK, page)
}

// quarantineGet serves GET /api/v1/quarantine/{id}.
func (s *Server) quarantineGet(w http.ResponseWriter, r *http.Request) {
	id, ok := quarantineID(w, r)
	if !ok {
		return
	}
	e, err := s.opts.Quarantine.Get(id)
	if err != nil {
		quarantineError(w, id, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// quarantineBody serves GET /api/v1/quarantine/{id}/body, streamed: a
// body may be large, and is read a record at a time.
func (s *Server) quarantineBody(w http.ResponseWriter, r *http.Request) {
	id, ok := quarantineID(w, r)
	if !ok {
		return
	}
	body, err := s.opts.Quarantine.Body(id)
	if err != nil {
		quarantineError(w, id, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := s.streamBody(w, body); err != nil {
		// The status is out: all that is left is to cut the answer short
		// so the client sees it incomplete.
		s.opts.Logger.Warn("quarantine body: stream cut short")
		panic(http.ErrAbortHandler)
	}
}

type quarantineOrder struct {
	Reason string `json:"reason"`
	By     string `json:"by"`
}

// quarantineReinject serves POST /api/v1/quarantine/{id}/reinject.
func (s *Server) quarantineReinject(w http.ResponseWriter, r *http.Request) {
	id, ok := quarantineID(w, r)
	if !ok {
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req quarantineOrder
	if err := decodeStrict(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	by, reason, err := checkOrder(map[string]string{"by": req.By, "reason": req.Reason}, Who(r), "re-inject")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.opts.Quarantine.Reinject(id, by, reason); err != nil {
		quarantineError(w, id, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"reinjected": id})
}

// quarantineDelete serves DELETE /api/v1/quarantine/{id}?reason=&by=.
func (s *Server) quarantineDelete(w http.ResponseWriter, r *http.Request) {
	id, ok := quarantineID(w, r)
	if !ok {
		return
	}
	q, err := params(r.URL.Query(), "by", "reason")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	by, reason, err := checkOrder(q, Who(r), "delete")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.opts.Quarantine.Delete(id, by, reason); err != nil {
		quarantineError(w, id, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": id})
}

// checkOrder checks an order's by and reason (required), naming the bad
// one.
func checkOrder(q map[string]string, who, verb string) (by, reason string, err error) {
	for _, k := range []string{"by", "reason"} {
		if err := checkText(q[k]); err != nil {
			return "", "", &fieldError{k, err.Error()}
		}
	}
	reason = strings.TrimSpace(q["reason"])
	if reason == "" {
		return "", "", &fieldError{"reason", fmt.Sprintf("required: say why; the %s's log record carries it", verb)}
	}
	return byOf(q, who), reason, nil
}
