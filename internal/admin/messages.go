package admin

// The queued messages (issue 11): a list by domain, pair or sender, one
// message's spooled state and header block, and its raw body.
//
//	GET /api/v1/messages?domain=|binding=|sender=&limit=&after=  → {"items":[...],"next":"QUEUE-ID"|""}
//	GET /api/v1/messages/{id}                                    → the message's envelope, recipients, header block
//	GET /api/v1/messages/{id}/body                               → message/rfc822, streamed from the spool
//
// A body is streamed from the spool's reader, never held whole: a 50 MB
// message costs the API a copy buffer. Each 64 KiB of it gets its own
// write timeout (streamBody), so a slow operator gets all of it.

import (
	"net/http"
	"net/url"
	"strconv"
)

// MessageQuery is a message list request: Domain, Domain and Binding (a
// pair), or Sender.
type MessageQuery struct {
	Domain, Binding, Sender string
	Limit                   int    // 0 = the default (100)
	After                   string // the previous page's "next"
}

// parseMessageQuery reads a message list's query string; the chooser's
// rules are the Queues' to judge. The domain is converted to A-labels, as
// every other endpoint takes it (aLabelPattern): the queues are keyed by
// A-labels, and domain=bücher.test would otherwise find nothing.
func parseMessageQuery(v url.Values) (MessageQuery, error) {
	q := MessageQuery{Domain: v.Get("domain"), Binding: v.Get("binding"), Sender: v.Get("sender"), After: v.Get("after")}
	var err error
	if q.Domain, err = aLabelPattern(q.Domain); err != nil {
		return q, err
	}
	if q.Limit, err = intParam(v, "limit", 0); err != nil {
		return q, err
	}
	return q, nil
}

// messages serves GET /api/v1/messages.
func (s *Server) messages(w http.ResponseWriter, r *http.Request) {
	q, err := parseMessageQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	page, err := s.opts.Queues.Messages(q)
	writeQueuesAnswer(w, "", page, err)
}

// message serves GET /api/v1/messages/{id}.
func (s *Server) message(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	m, err := s.opts.Queues.Message(id)
	writeQueuesAnswer(w, id, m, err)
}

// messageBody serves GET /api/v1/messages/{id}/body. Once the status is
// sent an error can only cut the body short, which the client sees as a
// length mismatch.
func (s *Server) messageBody(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	body, size, err := s.opts.Queues.MessageBody(id)
	if err != nil {
		writeQueuesAnswer(w, id, nil, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = s.streamBody(w, body)
}
