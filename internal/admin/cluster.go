package admin

// GET /api/v1/cluster lists the nodes sharing limits through Redis
// (internal/cluster), and /readyz's cluster check says whether this node
// is in fallback. Both exist only with cluster.redis set.

import (
	"context"
	"net/http"
)

// Cluster is what the admin API asks of the node's cluster membership.
type Cluster interface {
	// Nodes lists the nodes with a current heartbeat (JSON-able), or
	// while Redis does not answer the last ones seen, stale.
	Nodes(ctx context.Context) (nodes any, stale bool)
	// Status is nil while Redis answers, else why not and what the node
	// does instead.
	Status() error
	// Stopped reports whether the fallback stops delivery (fallback:
	// stop), which makes /readyz fail; in share or local fallback the
	// node still delivers, and /readyz names the fallback without failing.
	Stopped() bool
}

// cluster serves GET /api/v1/cluster.
func (s *Server) cluster(w http.ResponseWriter, r *http.Request) {
	// An outage is when the operator most needs the list: it answers with
	// the last one seen, marked stale, and the fallback in force, rather
	// than an error.
	nodes, stale := s.opts.Cluster.Nodes(r.Context())
	st := "shared"
	if err := s.opts.Cluster.Status(); err != nil {
		st = err.Error()
	}
	writeJSON(w, http.StatusOK, map[string]any{"nodes": nodes, "stale": stale, "status": st})
}
