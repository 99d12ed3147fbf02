package scheduler

import (
	"fmt"
	"time"

	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/spool"
)

// damagedStatus is the status reported for each recipient of a message the
// spool lost part of (spool.Salvage). RFC 3463 class 5 ("permanent
// failure"), not 4: the failure is permanent as far as this message goes:
// mtad will never try it again, and a 4.x.x with Action: failed would tell
// the sender's software that a retry is still under way. Subject 3 ("mail
// system status"), detail 0: none of 3.1–3.6 (disk full, system not
// accepting, capacity, conversion…) describes a damaged store.
const damagedStatus = "5.3.0"

// damagedText is the reason given for each recipient.
const damagedText = "message damaged in the spool"

// BounceDamaged spools a DSN to m's sender reporting every recipient of m
// not yet delivered (Pending) as failed with status 5.3.0, "message damaged
// in the spool", and submits the DSN. m is a message that spool.Salvage
// could only read in part (spool.SalvageOwed) and that is not queued. The
// original is not returned (its body is what was damaged). It returns the
// DSN, or nil when none is due (a null sender, no pending recipient, NOTIFY
// not asking for failures). Call it before Start or while running.
func (s *Scheduler) BounceDamaged(m *spool.Message) (*spool.Message, error) {
	now := s.clock.Now()
	d := damagedDSN(m, s.opts.Hostname, now)
	if d == nil {
		return nil, nil
	}
	w := s.opts.Spool.NewBody()
	if err := d.write(w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("DSN for damaged message %s: %w", m.ID, err)
	}
	dm := &spool.Message{
		Recipients: []spool.Recipient{{Addr: m.Sender}},
		Received:   now,
		Group:      m.Group,
		Binding:    m.Binding,
		DSNFor:     m.ID,
		SMTPUTF8:   d.global(),
		EightBit:   d.eightBit(),
	}
	if err := s.opts.Spool.PutBody(dm, w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("DSN for damaged message %s: %w", m.ID, err)
	}
	actions := make([]string, len(d.Rcpts))
	for i, r := range d.Rcpts {
		actions[i] = r.Action.String()
	}
	logging.DSN{QueueID: dm.ID, DSNFor: m.ID, Recipient: m.Sender, Actions: actions, Size: dm.Size}.Log(s.log)
	if err := s.Submit(dm); err != nil {
		return dm, fmt.Errorf("DSN for damaged message %s: submit %s: %w", m.ID, dm.ID, err)
	}
	return dm, nil
}

// damagedDSN is the DSN BounceDamaged sends, nil when none is due.
func damagedDSN(m *spool.Message, host string, now time.Time) *dsn {
	if m.Sender == "" {
		return nil
	}
	var reports []report
	for _, r := range m.Recipients {
		if r.State != spool.Pending {
			continue
		}
		reports = append(reports, report{Addr: r.Addr, Action: actFailed, Enhanced: damagedStatus, Text: damagedText, At: now})
	}
	reports = wanted(reports, m)
	if len(reports) == 0 {
		return nil
	}
	return &dsn{
		ReportingMTA: host, QueueID: m.ID, Sender: m.Sender, EnvID: m.EnvID, SMTPUTF8: m.SMTPUTF8,
		Arrival: m.Received, Now: now, Rcpts: reports,
		Note: "The message was damaged in the spool of this mail system and cannot be delivered; please send it again.",
	}
}
