package admin

// GET /api/v1/summary: the daemon at a glance (issue 11), what `mtactl
// summary` prints. The figures are the scheduler's own (scheduler.Summary:
// totals since start and counts over the last minute, queued messages and
// recipients, connections of the cap, spool use, suspensions in force);
// this file only serves them, in the API's one JSON key style.

import (
	"net/http"
)

// SummaryFunc returns the daemon's summary as a JSON-encodable value;
// cmd/mtad plugs in the scheduler's Summary (scheduler.Summary, whose
// JSON is the endpoint's shape). A func rather than the scheduler's type:
// the scheduler's tests import this package. It must be safe for
// concurrent use and cheap: an operator's terminal may poll it every
// second.
type SummaryFunc func() any

func (s *Server) summary(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.opts.Summary())
}
