package admin

// GET /api/v1/summary: the daemon at a glance (issue 11), what `mtactl
// summary` prints. The figures are the scheduler's own (scheduler.Summary:
// totals since start and counts over the last minute, queued messages and
// recipients, connections of the cap, spool use, suspensions in force);
// this file only serves them, in the API's one JSON key style.

import (
	"net/http"

	"github.com/mtad/mtad/internal/scheduler"
)

// SummaryFunc returns the daemon's summary; cmd/mtad plugs the
// scheduler's Summary in. It must be safe for concurrent use and cheap:
// an operator's terminal may poll it every second.
type SummaryFunc func() scheduler.Summary

func (s *Server) summary(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.opts.Summary())
}
