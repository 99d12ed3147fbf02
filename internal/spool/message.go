package spool

import "time"

// State is the delivery state of one recipient of a spooled message.
type State uint8

// Recipient states. Pending is the only non-final state; a message leaves the
// spool when none of its recipients is Pending.
const (
	Pending State = iota
	Delivered
	Bounced
	Expired
	Cancelled
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Bounced:
		return "bounced"
	case Expired:
		return "expired"
	case Cancelled:
		return "cancelled"
	}
	return "unknown"
}

// Final reports whether the state ends the recipient's life in the queue.
func (s State) Final() bool { return s != Pending }

// Message is the envelope and metadata of one spooled message. The body is
// stored apart and read with Spool.Body, so that memory holds metadata only.
type Message struct {
	ID         string // queue id, sortable by time; set by Put when empty
	Sender     string // envelope sender; "" is the null sender (a DSN)
	Recipients []Recipient
	Received   time.Time // when the message was accepted
	ClientIP   string    // the injecting client's address
	Helo       string    // the injecting client's EHLO/HELO name
	AuthUser   string    // the authenticated injecting user, if any
	MessageID  string    // the Message-ID header, for logs
	Group      string    // requested binding group ("" = default)
	Binding    string    // requested single binding ("" = pick from Group)
	Priority   int       // lower is sooner; 0 is normal
	Size       int64     // body size in bytes
	SMTPUTF8   bool      // the sender asked for SMTPUTF8
	EightBit   bool      // BODY=8BITMIME
	DSNFor     string    // for a DSN: the queue id it reports on
	EnvID      string    // RFC 3461 ENVID, xtext-decoded; "" when not given
	Ret        Ret       // RFC 3461 RET: what a DSN returns of the message

	// Where the body is stored (see Spool.PutBody): "" and 0 for a body in
	// one record under the message's own id, else the body id of its
	// chunk records and their count. Set by the spool, never by callers.
	bodyID string
	chunks int
}

// Ret is the RFC 3461 RET parameter of MAIL FROM.
type Ret uint8

const (
	RetUnset Ret = iota // not given: mtad returns the headers only
	RetFull             // RET=FULL: return the whole message
	RetHdrs             // RET=HDRS: return the headers only
)

// Notify is the RFC 3461 NOTIFY parameter of one RCPT TO, as a set of
// bits; 0 means it was not given (mtad then reports failures only).
// NotifyNever is never combined with another bit.
type Notify uint8

const (
	NotifyNever Notify = 1 << iota
	NotifySuccess
	NotifyFailure
	NotifyDelay
)

// Has reports whether the set asks for every bit of b. A set that was not
// given (0) asks for failures only, as RFC 3461 4.1 lets an MTA choose.
func (n Notify) Has(b Notify) bool {
	if n == 0 {
		n = NotifyFailure
	}
	return n&b == b
}

// Recipient is one envelope recipient and its delivery state. The state is
// stored under its own key so updating it never rewrites the message.
type Recipient struct {
	Addr        string
	State       State
	Attempts    int
	NextAttempt time.Time // zero: as soon as possible
	LastCode    int       // last remote (or local) reply code
	LastEnh     string    // last enhanced status code, "x.y.z"
	LastText    string    // last reply text
	LastMX      string    // MX host of the last attempt
	UpdatedAt   time.Time
	Notify      Notify // RFC 3461 NOTIFY; 0 = not given
	ORcpt       string // RFC 3461 ORCPT as "addr-type;address", xtext-decoded; "" = not given
	// DelayNotified is set once a delay DSN has been sent for this
	// recipient, so a restart does not send a second one.
	DelayNotified bool
}
