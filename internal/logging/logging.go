// Package logging owns mtad's zap setup and the delivery-log records: one
// JSON object per event in a message's life (received, rejected, delivered,
// deferred, bounced, expired, cancelled), per outbound connection attempt,
// and per spool recovery. Each record is a Go type with a Log method that
// writes exactly one log entry carrying a stable "event" field, so the
// delivery log can be filtered out of the process log with one predicate
// (event exists) and parsed by tools without guessing.
//
// Records are built from zap's typed fields (zap.String, zap.Int, ...), never
// zap.Any, so logging one costs no reflection. Every field of a record type
// is always present, empty or zero when unknown, so the shape of a record
// depends only on its event; the one exception is next_attempt (only on
// deferred).
//
// The package must never import another mtad package, start goroutines, or
// decide anything about delivery: it only formats what it is given.
//
// # Output
//
// JSON to standard output by default (journald captures it), or appended to
// a file, which Output.Reopen opens again at its path after logrotate moved
// it. Common keys: "ts" (ISO8601 time), "level", "msg" (for records, the
// same as event), "logger" (a named logger's name, if any).
//
// # Delivery-log fields
//
//	field           type      records                       meaning
//	event           string    all                           received, rejected, delivered, deferred, bounced,
//	                                                        expired, cancelled, connection, spool_recovered
//	queue_id        string    received, delivery events     mtad's queue id of the message
//	message_id      string    received                      the Message-ID header, as given
//	sender          string    received                      envelope sender (MAIL FROM); "" for the null sender
//	recipients      []string  received                      envelope recipients (RCPT TO)
//	size            int       received                      message size in bytes
//	client_ip       string    received, rejected            the injecting client's address
//	auth_user       string    received                      the AUTH identity; "" if none
//	command         string    rejected                      the refused command's verb (MAIL, RCPT, DATA, AUTH, ...)
//	recipient       string    delivery events               the one recipient the record is about
//	domain          string    delivery events, connection   the recipient domain
//	binding         string    delivery events, connection   the binding (source address) name
//	mx              string    delivery events, connection   the MX host name tried ("" if none reached)
//	remote_ip       string    delivery events, connection   the remote address connected to ("" if none)
//	phase           string    delivery events               the step that produced the result (connect, rcpt, data, ...)
//	code            int       rejected, delivery events     SMTP reply code (0 when there was no reply)
//	enhanced_code   string    rejected, delivery events     enhanced status code, "5.1.1" ("" if none)
//	response        string    rejected, delivery events     the reply text, or the local error when no reply
//	attempt         int       delivery events               1 for the first attempt
//	delay           float     delivery events               seconds since the message was received
//	next_attempt    time      deferred                      when the next attempt is due
//	fd              int       connection                    the connection's file descriptor (≥ 0) or a negative CONN_ERR code
//	conn_err        string    connection                    what went wrong; "" on success
//	messages        int       spool_recovered               messages found in the spool at start
//	recipients      int       spool_recovered               undelivered recipients among them
//	quarantined     int       spool_recovered               unreadable entries set aside
//
// In spool_recovered, recipients is a count, where in received it is a list:
// the issue that defined the record fixed that name. A log indexer that types
// fields by name should key them by (event, field).
package logging

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options selects the log's level, format and destination; the fields mirror
// the log.* keys of internal/config.
type Options struct {
	// Level is the lowest level written: "debug", "info" (default when
	// empty), "warn" or "error". Delivery-log records are info.
	Level string
	// Format is "json" (default when empty) or "console".
	Format string
	// File is appended to (created 0640 if missing); "" = standard output.
	File string
}

// New builds the process logger. A file named by o.File stays open for the
// life of the process; use Open to be able to reopen or close it.
func New(o Options) (*zap.Logger, error) {
	l, _, err := Open(o)
	return l, err
}

// Open is New that also returns the logger's Output: Reopen it when
// logrotate has moved the file (SIGUSR1), Close it after the last log write.
// Its SetLevel changes the level at once (log.level on reload).
func Open(o Options) (*zap.Logger, *Output, error) {
	level, err := parseLevel(o.Level)
	if err != nil {
		return nil, nil, err
	}
	lvl := zap.NewAtomicLevelAt(level)
	if o.File == "" {
		l, err := newWriter(o, os.Stdout, lvl)
		return l, &Output{level: lvl}, err
	}
	f, err := openLogFile(o.File)
	if err != nil {
		return nil, nil, err
	}
	out := &Output{path: o.File, f: f, level: lvl}
	l, err := newWriter(o, out, lvl)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return l, out, nil
}

// NewWriter builds a logger writing to w, ignoring o.File. The logger
// serialises its writes to w, so w need not be goroutine-safe. Tests of other
// packages use it to read the records they caused as JSON.
func NewWriter(o Options, w io.Writer) (*zap.Logger, error) {
	level, err := parseLevel(o.Level)
	if err != nil {
		return nil, err
	}
	return newWriter(o, w, zap.NewAtomicLevelAt(level))
}

// SetLevel changes the level of Open's logger (and every logger derived
// from it) at once: "debug", "info" ("" too), "warn" or "error". An
// unknown name is an error and the level stays.
func (o *Output) SetLevel(level string) error {
	l, err := parseLevel(level)
	if err != nil {
		return err
	}
	o.level.SetLevel(l)
	return nil
}

// Level is the level in force, as SetLevel spells it.
func (o *Output) Level() string { return o.level.Level().String() }

func newWriter(o Options, w io.Writer, level zap.AtomicLevel) (*zap.Logger, error) {
	enc := zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.SecondsDurationEncoder,
		EncodeName:     zapcore.FullNameEncoder,
	}
	var encoder zapcore.Encoder
	switch o.Format {
	case "", "json":
		encoder = zapcore.NewJSONEncoder(enc)
	case "console":
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		enc.EncodeDuration = zapcore.StringDurationEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, fmt.Errorf("logging: format %q is not json or console", o.Format)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core, zap.AddStacktrace(zapcore.DPanicLevel)), nil
}

func parseLevel(s string) (zapcore.Level, error) {
	switch s {
	case "", "info":
		return zapcore.InfoLevel, nil
	case "debug":
		return zapcore.DebugLevel, nil
	case "warn":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("logging: level %q is not debug, info, warn or error", s)
}
