// Package bounce owns bounce classification: it turns the result of a
// delivery attempt (an *outcome.Error: phase, reply code, enhanced code,
// text) into a bounce class, the kind of failure as Momentum (Message
// Systems, now SparkPost) numbers them, so that the delivery log, the DSNs
// and the metrics say "mailbox full" or "spam block" in one vocabulary
// whatever words the receiver used.
//
// The classes, with Momentum's names:
//
//	  1 Undetermined           nothing to classify by (no code, no phase)
//	 10 Invalid Recipient      the recipient does not exist
//	 20 Soft Bounce            a soft failure of the mailbox (greylisting, temporarily disabled)
//	 21 DNS Failure            the domain does not resolve (NXDOMAIN, SERVFAIL, no address)
//	 22 Mailbox Full           the mailbox is over quota
//	 23 Too Large              the message is too large for the receiver
//	 24 Timeout                the attempt or the message timed out (connect timeout, expiry)
//	 25 Admin Failure          failed by mtad's own policy
//	 30 Generic Bounce: No RCPT  no recipient could be determined
//	 40 Generic Bounce         a permanent failure for no stated reason
//	 50 Mail Block             blocked by the receiver (policy, authentication)
//	 51 Spam Block             blocked as coming from a known spam source (IP, reputation, block list)
//	 52 Spam Content           blocked as spam by its content
//	 53 Prohibited Attachment  blocked for an attachment
//	 54 Relay Denied           the receiver does not relay for us
//	 60 Auto-Reply             an auto-reply or vacation mail
//	 70 Transient Failure      delayed for now (rate limits, temporary blocks, 4xx)
//	 80 Subscribe              a subscribe request
//	 90 Unsubscribe            an unsubscribe request
//	100 Challenge-Response     a challenge-response probe
//
// Classes 30, 60, 80, 90 and 100 describe mail received back (bounces and
// replies parsed by a feedback loop), which mtad does not read: no built-in
// rule yields them, a rules file may.
//
// A Classifier holds rules of (reply code, enhanced code pattern, text
// regex) → class, compiled once; the first rule that matches wins; an
// operator's rules file comes before the built-in rules. mtad's own local
// failures (phase dns, connect or queue, or any result without a reply
// code) are never matched against the rules, which are written for remote
// texts: they are classified by phase and enhanced code alone.
//
// A transient reply that is a block ("421 4.7.0 [TSS04] ... temporarily
// deferred") is class 70 Transient Failure: the receiver will take the mail
// later, and class 51 is kept for a 5xx block, after which it will not.
// With the built-in rules a deferral is never 51, so the count of 51 is a
// count of mail lost to blocks.
//
// It must never import another mtad package but outcome, keep state that
// changes after New, or do I/O except reading a rules file in Load.
package bounce

import (
	"strconv"
)

// Class is a bounce class, numbered as Momentum numbers them. The zero
// Class is "not classified" (a delivered recipient) and is never logged.
type Class int

// The bounce classes.
const (
	Undetermined         Class = 1
	InvalidRecipient     Class = 10
	SoftBounce           Class = 20
	DNSFailure           Class = 21
	MailboxFull          Class = 22
	TooLarge             Class = 23
	Timeout              Class = 24
	AdminFailure         Class = 25
	GenericNoRcpt        Class = 30
	Generic              Class = 40
	MailBlock            Class = 50
	SpamBlock            Class = 51
	SpamContent          Class = 52
	ProhibitedAttachment Class = 53
	RelayDenied          Class = 54
	AutoReply            Class = 60
	TransientFailure     Class = 70
	Subscribe            Class = 80
	Unsubscribe          Class = 90
	ChallengeResponse    Class = 100
)

var names = map[Class]string{
	Undetermined:         "Undetermined",
	InvalidRecipient:     "Invalid Recipient",
	SoftBounce:           "Soft Bounce",
	DNSFailure:           "DNS Failure",
	MailboxFull:          "Mailbox Full",
	TooLarge:             "Too Large",
	Timeout:              "Timeout",
	AdminFailure:         "Admin Failure",
	GenericNoRcpt:        "Generic Bounce: No RCPT",
	Generic:              "Generic Bounce",
	MailBlock:            "Mail Block",
	SpamBlock:            "Spam Block",
	SpamContent:          "Spam Content",
	ProhibitedAttachment: "Prohibited Attachment",
	RelayDenied:          "Relay Denied",
	AutoReply:            "Auto-Reply",
	TransientFailure:     "Transient Failure",
	Subscribe:            "Subscribe",
	Unsubscribe:          "Unsubscribe",
	ChallengeResponse:    "Challenge-Response",
}

// Valid reports whether c is one of the classes above.
func (c Class) Valid() bool { _, ok := names[c]; return ok }

// String returns Momentum's name of the class, or "class N" for a number
// that is not one.
func (c Class) String() string {
	if n, ok := names[c]; ok {
		return n
	}
	return "class " + strconv.Itoa(int(c))
}

// Classes returns every valid class in ascending order.
func Classes() []Class {
	return []Class{Undetermined, InvalidRecipient, SoftBounce, DNSFailure, MailboxFull, TooLarge,
		Timeout, AdminFailure, GenericNoRcpt, Generic, MailBlock, SpamBlock, SpamContent,
		ProhibitedAttachment, RelayDenied, AutoReply, TransientFailure, Subscribe, Unsubscribe,
		ChallengeResponse}
}
