package spool

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Usage reports the disk space the spool's store takes (pebble's own
// account of its WAL, tables and manifests) and the space left on its file
// system, for the metrics. It reads counters only: no I/O beyond a statfs.
func (s *Spool) Usage() (used, free uint64, err error) {
	err = s.withDB(func(db *pebble.DB) error {
		used = db.Metrics().DiskSpaceUsage()
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("spool usage: %w", err)
	}
	u, err := s.opts.FS.GetDiskUsage(s.dbDir)
	if err != nil {
		return used, 0, fmt.Errorf("spool usage: free space of %s: %w", s.dbDir, err)
	}
	return used, u.AvailBytes, nil
}
