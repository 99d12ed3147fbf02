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
	// Nodes lists the nodes with a current heartbeat (JSON-able); an
	// error when Redis does not answer.
	Nodes(ctx context.Context) (any, error)
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
	nodes, err := s.opts.Cluster.Nodes(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cluster: "+err.Error())
		return
	}
	st := "shared"
	if err := s.opts.Cluster.Status(); err != nil {
		st = err.Error()
	}
	writeJSON(w, http.StatusOK, map[string]any{"nodes": nodes, "status": st})
}
