package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/policy"
)

// Suspensions outlive a restart: an operator's "hold gmail for 24h" must
// not end because the daemon was restarted. They are written whole, as
// JSON, to Options.SuspensionsFile (tmp file, fsync, rename) whenever they
// change — rarely — and read back by New, keeping their ids. Rule
// throttles are not kept: they are short and ramp back by themselves.

// savedSuspensions is the file's content.
type savedSuspensions struct {
	Version     int                 `json:"version"`
	LastID      uint64              `json:"last_id"` // ids are never handed out twice
	Suspensions []policy.Suspension `json:"suspensions"`
}

// loadSuspensions restores the suspensions of Options.SuspensionsFile
// still in force at now; a missing file is none. A file that cannot be read
// is an error: suspensions that silently vanish would send held mail.
func (s *Scheduler) loadSuspensions(now time.Time) error {
	path := s.opts.SuspensionsFile
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading suspensions: %w", err)
	}
	var f savedSuspensions
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("reading suspensions %s: %w (move it aside to start without them)", path, err)
	}
	s.suspensions.NoteID(f.LastID)
	restored := 0
	for _, sp := range f.Suspensions {
		if !now.Before(sp.Until) {
			s.logPolicy(logging.Policy{Action: "suspension_ended", Source: sp.Source, Rule: sp.Rule, Scope: string(sp.Kind),
				Name: sp.Name, Binding: sp.Binding, Until: sp.Until, ID: sp.ID, Reason: sp.Reason})
			continue
		}
		s.suspensions.Restore(sp)
		restored++
	}
	if restored > 0 {
		s.log.Info("suspensions restored", zap.Int("suspensions", restored), zap.String("file", path))
	}
	s.savedGen.Store(s.suspensions.Gen())
	return nil
}

// saveSuspensions writes the suspensions held when they changed since the
// last write; an error is logged (the suspensions still hold in memory).
func (s *Scheduler) saveSuspensions() {
	path := s.opts.SuspensionsFile
	if path == "" {
		return
	}
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	gen := s.suspensions.Gen()
	if gen == s.savedGen.Load() {
		return
	}
	f := savedSuspensions{Version: 1, LastID: s.suspensions.LastID(), Suspensions: s.suspensions.All()}
	b, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = writeFileAtomic(path, b)
	}
	if err != nil {
		s.log.Error("saving suspensions failed; they hold until a restart", zap.String("file", path), zap.Error(err))
		return
	}
	s.savedGen.Store(gen)
}

// writeFileAtomic replaces path with b: a temporary file beside it,
// fsync'd, renamed over it, and the directory fsync'd.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
