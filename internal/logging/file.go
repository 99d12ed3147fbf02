package logging

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"go.uber.org/zap"
)

// Output is where Open's logger writes: standard output, or a file that
// can be reopened at the same path. logrotate renames the file and then
// signals mtad (deploy/logrotate/mtad); until Reopen the logger keeps
// writing to the renamed file through its open descriptor, after it the
// lines go to a new file at the configured path. No line is lost or split:
// the swap happens between two writes.
type Output struct {
	path  string          // "" for standard output
	level zap.AtomicLevel // the logger's level, changed by SetLevel

	mu sync.Mutex // guards f: writes, Sync, Reopen and Close take it
	f  *os.File   // nil once closed (and always for standard output)
}

// openLogFile opens path for appending, creating it 0640: the group (adm
// on Debian, which logrotate and log readers use) may read, others not.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("logging: open log file: %w", err)
	}
	return f, nil
}

// Write writes one encoded entry; zap's core serialises calls already, the
// lock is for Reopen.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return 0, errors.New("logging: write after close")
	}
	return o.f.Write(p)
}

// Sync is zapcore.WriteSyncer's: it fsyncs the current file.
func (o *Output) Sync() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	return o.f.Sync()
}

// Path is the log file's path, "" for standard output.
func (o *Output) Path() string { return o.path }

// Reopen closes the log file and opens its path again (creating it if it
// was moved away), so that the lines written after it go to the path and
// not to the file logrotate renamed. When the path cannot be opened the
// old file is kept and written to, and the error says why. For standard
// output it does nothing.
func (o *Output) Reopen() error {
	if o == nil || o.path == "" {
		return nil
	}
	// Open outside the lock: a slow file system does not hold up the
	// writers; only the swap is under it.
	nf, err := openLogFile(o.path)
	if err != nil {
		return err
	}
	o.mu.Lock()
	old := o.f
	if old == nil { // closed meanwhile
		o.mu.Unlock()
		nf.Close()
		return errors.New("logging: reopen after close")
	}
	o.f = nf
	o.mu.Unlock()
	// The renamed file gets what was written to it on disk before it is
	// let go, so that logrotate's compression (delaycompress) reads it whole.
	serr := old.Sync()
	if cerr := old.Close(); cerr != nil {
		return fmt.Errorf("logging: close the rotated log file: %w", cerr)
	}
	if serr != nil {
		return fmt.Errorf("logging: sync the rotated log file: %w", serr)
	}
	return nil
}

// Close syncs and closes the log file; writes after it fail. For standard
// output it does nothing. Call it after the last log write.
func (o *Output) Close() error {
	if o == nil || o.path == "" {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	serr := o.f.Sync()
	err := o.f.Close()
	o.f = nil
	return errors.Join(serr, err)
}
