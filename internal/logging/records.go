package logging

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Event is the value of a record's "event" field.
type Event string

// The events of the delivery log. The delivery events (delivered ...
// cancelled) are the Delivery record's; a recipient ends in exactly one of
// delivered, bounced, expired or cancelled.
const (
	EventReceived       Event = "received"
	EventRejected       Event = "rejected"
	EventDelivered      Event = "delivered"
	EventDeferred       Event = "deferred"
	EventBounced        Event = "bounced"
	EventExpired        Event = "expired"
	EventCancelled      Event = "cancelled"
	EventConnection     Event = "connection"
	EventSpoolRecovered Event = "spool_recovered"
	EventSpoolSalvaged  Event = "spool_salvaged"
	EventDSN            Event = "dsn"
	EventPolicy         Event = "policy"
	EventTLSPolicy      Event = "tls_policy"
)

// write logs one record at level if the logger is enabled for it; the fields
// are only built when it is.
func write(l *zap.Logger, level zapcore.Level, ev Event, fields func() []zap.Field) {
	if ce := l.Check(level, string(ev)); ce != nil {
		ce.Write(fields()...)
	}
}

// Received records a message accepted and made durable by injection.
type Received struct {
	QueueID    string
	MessageID  string
	Sender     string
	Recipients []string
	Size       int64
	ClientIP   string
	AuthUser   string
	// DKIM names the message's signatures ("d=example.com s=s2026
	// a=rsa-sha256"), logged as a list under "dkim"; when there are none,
	// DKIMUnsigned says why, logged as "dkim": "unsigned: <why>". Both
	// empty (no keys configured): no "dkim" field.
	DKIM         []string
	DKIMUnsigned string
	// Metadata is what an HTTP injection asked to carry to its log
	// records (logged as "metadata" when not empty).
	Metadata map[string]string
}

// Fields returns the record's fields, "event" first.
func (r Received) Fields() []zap.Field {
	f := []zap.Field{
		zap.String("event", string(EventReceived)),
		zap.String("queue_id", r.QueueID),
		zap.String("message_id", r.MessageID),
		zap.String("sender", r.Sender),
		zap.Strings("recipients", r.Recipients),
		zap.Int64("size", r.Size),
		zap.String("client_ip", r.ClientIP),
		zap.String("auth_user", r.AuthUser),
	}
	switch {
	case len(r.DKIM) > 0:
		f = append(f, zap.Strings("dkim", r.DKIM))
	case r.DKIMUnsigned != "":
		f = append(f, zap.String("dkim", "unsigned: "+r.DKIMUnsigned))
	}
	if len(r.Metadata) > 0 {
		f = append(f, zap.Any("metadata", r.Metadata))
	}
	return f
}

// Log writes the record as one info entry.
func (r Received) Log(l *zap.Logger) { write(l, zapcore.InfoLevel, EventReceived, r.Fields) }

// Rejected records a command refused by injection with a 4xx/5xx reply.
type Rejected struct {
	ClientIP string
	Command  string // the verb: MAIL, RCPT, DATA, AUTH, ...
	Code     int
	Enhanced string
	Reply    string // logged as "response"
}

// Fields returns the record's fields, "event" first.
func (r Rejected) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventRejected)),
		zap.String("client_ip", r.ClientIP),
		zap.String("command", r.Command),
		zap.Int("code", r.Code),
		zap.String("enhanced_code", r.Enhanced),
		zap.String("response", r.Reply),
	}
}

// Log writes the record as one info entry.
func (r Rejected) Log(l *zap.Logger) { write(l, zapcore.InfoLevel, EventRejected, r.Fields) }

// Delivery records the result of one attempt for one recipient. Event must
// be one of EventDelivered, EventDeferred, EventBounced, EventExpired or
// EventCancelled; the constructors below set it.
type Delivery struct {
	Event     Event
	QueueID   string
	Recipient string
	Domain    string
	Binding   string
	MX        string
	RemoteIP  string
	// Phase is the step that produced the result (an outcome.Phase as a
	// string): "connect", "rcpt", "data", ...; "" when not applicable.
	Phase    string
	Code     int
	Enhanced string
	Response string
	Attempt  int
	// Delay is the time since the message was received.
	Delay time.Duration
	// NextAttempt is when a deferred recipient is tried again; logged only
	// when non-zero.
	NextAttempt time.Time
	// BounceClass is the failure's bounce class (internal/policy: 10
	// invalid recipient, 51 spam block, ...) on deferred, bounced and
	// expired records; logged only when non-zero.
	BounceClass int
	// TLS is the TLS the attempt had and the policy that applied
	// (tlspolicy.Info's text: "TLSv1.3 TLS_AES_128_GCM_SHA256 verified
	// policy=mta-sts", "none policy=opportunistic"); logged only when
	// non-empty (delivered and deferred records after a connection).
	TLS string
}

// Delivered returns d as a "delivered" record.
func Delivered(d Delivery) Delivery { d.Event = EventDelivered; return d }

// Deferred returns d as a "deferred" record.
func Deferred(d Delivery) Delivery { d.Event = EventDeferred; return d }

// Bounced returns d as a "bounced" record.
func Bounced(d Delivery) Delivery { d.Event = EventBounced; return d }

// Expired returns d as an "expired" record.
func Expired(d Delivery) Delivery { d.Event = EventExpired; return d }

// Cancelled returns d as a "cancelled" record.
func Cancelled(d Delivery) Delivery { d.Event = EventCancelled; return d }

// Fields returns the record's fields, "event" first.
func (d Delivery) Fields() []zap.Field {
	f := make([]zap.Field, 0, 16)
	f = append(f,
		zap.String("event", string(d.Event)),
		zap.String("queue_id", d.QueueID),
		zap.String("recipient", d.Recipient),
		zap.String("domain", d.Domain),
		zap.String("binding", d.Binding),
		zap.String("mx", d.MX),
		zap.String("remote_ip", d.RemoteIP),
		zap.String("phase", d.Phase),
		zap.Int("code", d.Code),
		zap.String("enhanced_code", d.Enhanced),
		zap.String("response", d.Response),
		zap.Int("attempt", d.Attempt),
		zap.Duration("delay", d.Delay),
	)
	if !d.NextAttempt.IsZero() {
		f = append(f, zap.Time("next_attempt", d.NextAttempt))
	}
	if d.BounceClass != 0 {
		f = append(f, zap.Int("bounce_class", d.BounceClass))
	}
	if d.TLS != "" {
		f = append(f, zap.String("tls", d.TLS))
	}
	return f
}

// Log writes the record as one info entry. An empty Event is logged as
// "delivery" rather than dropped, so a caller's mistake stays visible.
func (d Delivery) Log(l *zap.Logger) {
	if d.Event == "" {
		d.Event = "delivery"
	}
	write(l, zapcore.InfoLevel, d.Event, d.Fields)
}

// Connection records one outbound connection attempt: FD is the file
// descriptor (≥ 0) on success or the negative CONN_ERR code, ConnErr the
// error text ("" on success).
type Connection struct {
	Domain   string
	Binding  string
	MX       string
	RemoteIP string
	FD       int
	ConnErr  string
}

// Fields returns the record's fields, "event" first.
func (c Connection) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventConnection)),
		zap.String("domain", c.Domain),
		zap.String("binding", c.Binding),
		zap.String("mx", c.MX),
		zap.String("remote_ip", c.RemoteIP),
		zap.Int("fd", c.FD),
		zap.String("conn_err", c.ConnErr),
	}
}

// Log writes the record as one info entry.
func (c Connection) Log(l *zap.Logger) { write(l, zapcore.InfoLevel, EventConnection, c.Fields) }

// SpoolRecovered records what the spool scan found at start.
type SpoolRecovered struct {
	Messages    int
	Recipients  int // undelivered recipients; logged as "recipients"
	Quarantined int
}

// Fields returns the record's fields, "event" first.
func (s SpoolRecovered) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventSpoolRecovered)),
		zap.Int("messages", s.Messages),
		zap.Int("recipients", s.Recipients),
		zap.Int("quarantined", s.Quarantined),
	}
}

// Log writes the record as one entry: info, or warn when entries were
// quarantined, since those need an operator's look.
func (s SpoolRecovered) Log(l *zap.Logger) {
	level := zapcore.InfoLevel
	if s.Quarantined > 0 {
		level = zapcore.WarnLevel
	}
	write(l, level, EventSpoolRecovered, s.Fields)
}

// SpoolSalvaged records a start-up salvage of a damaged spool (see
// spool.Salvage): what was copied to the fresh store, what went to
// quarantine, what could not be read at all, and where the damaged store
// was kept. Always an error: mail was or may have been lost, and an
// operator should look at the disk.
type SpoolSalvaged struct {
	Copied      int // messages copied whole
	Quarantined int // messages with a readable envelope, damaged elsewhere
	DSNOwed     int // of those, the ones whose sender is sent a DSN
	NoticeOwed  int // of those, the ones whose sender is sent a damage notice (no recipient readable to report on)
	Orphans     int // messages whose envelope was unreadable, some records kept
	// KeptQuarantined and KeptDSNOwed count what was in quarantine before
	// the damage (messages, owed-DSN markers), copied as it was: not new
	// losses, but what an operator still has to look at.
	KeptQuarantined int
	KeptDSNOwed     int
	DamagedRanges   int    // key ranges that could not be read
	DamagedDir      string // where the damaged store is kept
	Cause           string // the read error that started the salvage
}

// Fields returns the record's fields, "event" first.
func (s SpoolSalvaged) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventSpoolSalvaged)),
		zap.Int("copied", s.Copied),
		zap.Int("quarantined", s.Quarantined),
		zap.Int("dsn_owed", s.DSNOwed),
		zap.Int("notice_owed", s.NoticeOwed),
		zap.Int("unreadable_envelopes", s.Orphans),
		zap.Int("kept_quarantined", s.KeptQuarantined),
		zap.Int("kept_dsn_owed", s.KeptDSNOwed),
		zap.Int("damaged_ranges", s.DamagedRanges),
		zap.String("damaged_dir", s.DamagedDir),
		zap.String("cause", s.Cause),
	}
}

// Log writes the record as one entry at error level.
func (s SpoolSalvaged) Log(l *zap.Logger) { write(l, zapcore.ErrorLevel, EventSpoolSalvaged, s.Fields) }

// DSN records a delivery status notification spooled for a message's
// sender: which message it reports on, and the RFC 3464 action of each
// recipient it reports (failed, delayed, relayed).
type DSN struct {
	QueueID   string // the DSN's own queue id
	DSNFor    string // the queue id of the message it reports on
	Recipient string // the DSN's recipient: the original envelope sender
	Actions   []string
	Size      int64
}

// Fields returns the record's fields, "event" first.
func (r DSN) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventDSN)),
		zap.String("queue_id", r.QueueID),
		zap.String("dsn_for", r.DSNFor),
		zap.String("recipient", r.Recipient),
		zap.Strings("actions", r.Actions),
		zap.Int64("size", r.Size),
	}
}

// Log writes the record at info level.
func (r DSN) Log(l *zap.Logger) { write(l, zapcore.InfoLevel, EventDSN, r.Fields) }

// Policy is one policy action (DESIGN invariant 9): a suspension or a
// throttle put in force or ended, a rule's bounce, defer or rebind. It
// names what acted (the rule, an operator, adaptive), the scope it applies
// to, until when, and the reply that fired it.
type Policy struct {
	Action   string // suspend, throttle, bounce, defer, rebind, suspension_ended, throttle_ended, resume, unthrottle
	Rule     string // the rule's name; "" when not a rule's
	Source   string // rule, operator, adaptive, config
	By       string // who, for an operator's action (mtactl --by); "" when not said
	Scope    string // domain, site, provider, binding, pair
	Name     string // the domain, site key or provider name
	Binding  string // "" = every binding
	Until    time.Time
	Reason   string // the reply that matched, or the operator's reason
	Domain   string // the domain whose delivery got the reply
	QueueID  string // the message whose delivery got the reply
	ID       string // the suspension's id
	Settings string // a throttle's values, e.g. "max_message_rate=1/m max_connections=1"
	Node     string // the cluster node it came from, when not this one
}

// Fields returns the record's fields, "event" first; empty ones are left out.
func (r Policy) Fields() []zap.Field {
	f := []zap.Field{zap.String("event", string(EventPolicy)), zap.String("action", r.Action)}
	add := func(k, v string) {
		if v != "" {
			f = append(f, zap.String(k, v))
		}
	}
	add("rule", r.Rule)
	add("source", r.Source)
	add("by", r.By)
	add("scope", r.Scope)
	add("name", r.Name)
	add("binding", r.Binding)
	if !r.Until.IsZero() {
		f = append(f, zap.Time("until", r.Until))
	}
	add("reason", r.Reason)
	add("domain", r.Domain)
	add("queue_id", r.QueueID)
	add("id", r.ID)
	add("settings", r.Settings)
	add("node", r.Node)
	return f
}

// Log writes the record at info level.
func (r Policy) Log(l *zap.Logger) { write(l, zapcore.InfoLevel, EventPolicy, r.Fields) }

// TLSPolicy is a warning that a domain's TLS policy was not met but the
// mail went anyway: its MTA-STS policy is in testing mode (RFC 8461 §5),
// and an MX host it does not list was used, or a certificate that does not
// verify, or no TLS at all.
type TLSPolicy struct {
	Domain string
	MX     string
	Policy string // "mta-sts"
	Mode   string // "testing"
	Reason string
}

// Fields returns the record's fields, "event" first.
func (r TLSPolicy) Fields() []zap.Field {
	return []zap.Field{
		zap.String("event", string(EventTLSPolicy)),
		zap.String("domain", r.Domain),
		zap.String("mx", r.MX),
		zap.String("policy", r.Policy),
		zap.String("mode", r.Mode),
		zap.String("reason", r.Reason),
	}
}

// Log writes the record at warn level.
func (r TLSPolicy) Log(l *zap.Logger) { write(l, zapcore.WarnLevel, EventTLSPolicy, r.Fields) }
