// Package policy owns delivery policy (DESIGN.md: shaping, throttles,
// suspensions, response rules, bounce classification): the decisions, not
// their application, which is the scheduler's.
//
// Shaping (shaping.go, rate.go) resolves which limits apply to a
// domain/binding pair; throttles (throttle.go) are token buckets per scope key and the
// ramped overrides a throttle rule sets; Suspensions (suspend.go) pause a
// domain, site, provider, binding or pair until an end time; Rules
// (rules.go) turn a remote reply into an action. All take the time as an
// argument (the scheduler's clock) and start no goroutines: the scheduler
// owns the timers, expires what ended (Expire) and logs it.
//
// Bounce classification turns the result of a delivery attempt (an *outcome.Error: phase, reply code, enhanced code,
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
// It must never import another mtad package but outcome and config, read
// the wall clock, start goroutines, or do I/O except reading a rules file.
// A Classifier and Rules' patterns never change after they are compiled;
// the state that does (buckets, overrides, suspensions, trigger counters)
// is bounded and safe for concurrent use.
package policy

import (
	"strconv"
)

// BounceClass is a bounce class, numbered as Momentum numbers them. The zero
// BounceClass is "not classified" (a delivered recipient) and is never logged.
type BounceClass int

// The bounce classes.
const (
	ClassUndetermined         BounceClass = 1
	ClassInvalidRecipient     BounceClass = 10
	ClassSoftBounce           BounceClass = 20
	ClassDNSFailure           BounceClass = 21
	ClassMailboxFull          BounceClass = 22
	ClassTooLarge             BounceClass = 23
	ClassTimeout              BounceClass = 24
	ClassAdminFailure         BounceClass = 25
	ClassGenericNoRcpt        BounceClass = 30
	ClassGeneric              BounceClass = 40
	ClassMailBlock            BounceClass = 50
	ClassSpamBlock            BounceClass = 51
	ClassSpamContent          BounceClass = 52
	ClassProhibitedAttachment BounceClass = 53
	ClassRelayDenied          BounceClass = 54
	ClassAutoReply            BounceClass = 60
	ClassTransientFailure     BounceClass = 70
	ClassSubscribe            BounceClass = 80
	ClassUnsubscribe          BounceClass = 90
	ClassChallengeResponse    BounceClass = 100
)

var names = map[BounceClass]string{
	ClassUndetermined:         "Undetermined",
	ClassInvalidRecipient:     "Invalid Recipient",
	ClassSoftBounce:           "Soft Bounce",
	ClassDNSFailure:           "DNS Failure",
	ClassMailboxFull:          "Mailbox Full",
	ClassTooLarge:             "Too Large",
	ClassTimeout:              "Timeout",
	ClassAdminFailure:         "Admin Failure",
	ClassGenericNoRcpt:        "Generic Bounce: No RCPT",
	ClassGeneric:              "Generic Bounce",
	ClassMailBlock:            "Mail Block",
	ClassSpamBlock:            "Spam Block",
	ClassSpamContent:          "Spam Content",
	ClassProhibitedAttachment: "Prohibited Attachment",
	ClassRelayDenied:          "Relay Denied",
	ClassAutoReply:            "Auto-Reply",
	ClassTransientFailure:     "Transient Failure",
	ClassSubscribe:            "Subscribe",
	ClassUnsubscribe:          "Unsubscribe",
	ClassChallengeResponse:    "Challenge-Response",
}

// Valid reports whether c is one of the classes above.
func (c BounceClass) Valid() bool { _, ok := names[c]; return ok }

// String returns Momentum's name of the class, or "class N" for a number
// that is not one.
func (c BounceClass) String() string {
	if n, ok := names[c]; ok {
		return n
	}
	return "class " + strconv.Itoa(int(c))
}

// Classes returns every valid class in ascending order.
func BounceClasses() []BounceClass {
	return []BounceClass{ClassUndetermined, ClassInvalidRecipient, ClassSoftBounce, ClassDNSFailure, ClassMailboxFull, ClassTooLarge,
		ClassTimeout, ClassAdminFailure, ClassGenericNoRcpt, ClassGeneric, ClassMailBlock, ClassSpamBlock, ClassSpamContent,
		ClassProhibitedAttachment, ClassRelayDenied, ClassAutoReply, ClassTransientFailure, ClassSubscribe, ClassUnsubscribe,
		ClassChallengeResponse}
}
