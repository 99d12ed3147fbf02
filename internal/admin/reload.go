package admin

import (
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Reloader re-reads the configuration and the files it names and applies
// what it can; the daemon plugs it in (one reload at a time, the SIGHUP
// path and this API's alike). who and reason are for its log record.
type Reloader interface {
	Reload(who, reason string) ReloadResult
}

// ReloadResult is what one reload did. OK false means the configuration
// or a file it names was refused: Error says why and nothing was applied
// (the running configuration stays).
type ReloadResult struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Applied names what took effect at once: config sections or keys
	// ("shaping", "bindings", "log.level").
	Applied []string `json:"applied"`
	// NeedingRestart names each changed key that only a restart applies,
	// with why: "spool: the spool directory is open".
	NeedingRestart []string      `json:"needing_restart"`
	At             time.Time     `json:"at"`
	Duration       time.Duration `json:"duration_ns"`
}

// reloadRequest is POST /api/v1/reload's body; both fields are optional.
type reloadRequest struct {
	By     string `json:"by"`
	Reason string `json:"reason"`
}

// reload serves POST /api/v1/reload: 200 with the result when applied,
// 422 with {"error", "result"} when the configuration was refused.
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req reloadRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := decodeStrict(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	for _, f := range []struct{ name, v string }{{"by", req.By}, {"reason", req.Reason}} {
		if err := checkText(f.v); err != nil {
			writeError(w, http.StatusBadRequest, (&fieldError{f.name, err.Error()}).Error())
			return
		}
	}
	who := byOf(map[string]string{"by": req.By}, Who(r))
	reason := strings.TrimSpace(req.Reason)
	s.opts.Logger.Info("reload asked through the admin API", zap.String("by", who), zap.String("reason", reason))
	res := s.opts.Reloader.Reload(who, reason)
	if !res.OK {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": res.Error, "result": res})
		return
	}
	writeJSON(w, http.StatusOK, res)
}
