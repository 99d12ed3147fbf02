// Package conform makes message content conformant before it is stored or
// sent: body lines over RFC 5322's 998 octets, 8-bit bodies for receivers
// without 8BITMIME (RFC 6152), and non-ASCII header sections for receivers
// without SMTPUTF8 (RFC 6531).
//
// It owns the reading of a message's MIME structure as a stream of lines and
// the two passes over it:
//
//   - Scan reads the message once, looking at each byte about once with
//     bytes.IndexByte-class scans, and reports what it found: long lines,
//     8-bit octets, NULs, bare CR/LF, non-ASCII headers, and per MIME entity
//     (in order of appearance) what its body holds. Most messages need
//     nothing, and the caller then skips the second pass.
//   - Rewrite opens the source again and streams it to the destination,
//     applying the plan that Scan made: a leaf part that has a line over 998
//     octets (or 8-bit octets, when converting to 7 bits) is re-encoded as
//     quoted-printable if it is text/*, base64 otherwise, and its
//     Content-Transfer-Encoding field set; header lines over 998 octets are
//     folded before a whitespace. Everything else is copied byte for byte:
//     other parts, boundaries, preamble and epilogue.
//
// Two passes are needed because a part's header comes before its body, and
// the header must say how the body is encoded; the spool re-reads a body
// cheaply, so reading twice costs less than holding a part.
//
// Memory is bounded: a 64 KiB read buffer, one header block at a time (at
// most MaxHeaderBytes), one frame per multipart nesting level (at most
// MaxDepth), and one byte of plan per MIME entity.
//
// This package must never truncate content, split a content line blindly
// (a long line is only ever cut inside an encoding that a decoder reverses:
// a quoted-printable soft line break or a base64 line break), change a part
// that does not need it, or hold a whole body or a whole part in memory. It
// does no DKIM: conversion happens before signing. It imports no other mtad
// package.
package conform

import (
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-smtp"
)

// Limits. MaxLine is RFC 5322 §2.1.1's; the others bound memory.
const (
	MaxLine        = 998       // octets in a line, excluding CRLF
	MaxHeaderBytes = 256 << 10 // octets in one header block (a message's or a part's)
	MaxDepth       = 50        // MIME entities nested in one another
)

// Error is a reason the content cannot be taken or made conformant, with the
// SMTP reply it calls for. Returned errors wrap one of the Err* values below,
// so errors.Is and errors.As both work.
type Error struct {
	Code     int
	Enhanced smtp.EnhancedCode
	Message  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Message)
}

// SMTPError returns the reply to give a client (or to put in a bounce).
func (e *Error) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: e.Code, EnhancedCode: e.Enhanced, Message: e.Message}
}

// The reasons content is refused. All are permanent: the same bytes will
// never become acceptable by retrying.
var (
	ErrHeaderTooBig = &Error{552, smtp.EnhancedCode{5, 3, 4}, "header section too big"}
	ErrTooDeep      = &Error{554, smtp.EnhancedCode{5, 6, 0}, "MIME structure nested too deeply"}
	// ErrUnfoldable: a header line over 998 octets without whitespace to fold at.
	ErrUnfoldable = &Error{554, smtp.EnhancedCode{5, 6, 0}, "header line too long and cannot be folded"}
	// ErrCannotConform: a long line where no encoding can be applied (a
	// multipart preamble, an unknown transfer encoding, a container type).
	ErrCannotConform = &Error{554, smtp.EnhancedCode{5, 6, 0}, "line too long and part cannot be re-encoded"}
	// ErrConversion: 8-bit content that cannot be converted to 7 bits.
	ErrConversion = &Error{554, smtp.EnhancedCode{5, 6, 3}, "8-bit content cannot be converted to 7-bit"}
	// ErrNeedsUTF8: a header needs SMTPUTF8 (a non-ASCII local part, a
	// non-ASCII structured field).
	ErrNeedsUTF8 = &Error{554, smtp.EnhancedCode{5, 6, 7}, "non-ASCII header cannot be downgraded"}
	// ErrChanged: the second read of the source differs from the first.
	ErrChanged = errors.New("conform: source changed between scan and rewrite")
)

// Opener opens the source message from its start; Rewrite calls it at most
// twice and closes what it returns.
type Opener func() (io.ReadCloser, error)

// Options say what Rewrite must produce besides lines of at most 998 octets,
// which it always does.
type Options struct {
	// To7Bit converts every 8-bit part to 7 bits, for a receiver that does
	// not offer 8BITMIME; it implies ASCIIHeaders.
	To7Bit bool
	// ASCIIHeaders downgrades non-ASCII header fields with RFC 2047
	// encoded-words (see DowngradeHeader), for a receiver that does not offer
	// SMTPUTF8; what cannot be downgraded fails with ErrNeedsUTF8.
	ASCIIHeaders bool
}

func (o Options) asciiHeaders() bool { return o.To7Bit || o.ASCIIHeaders }

// Result says what Rewrite changed.
type Result struct {
	Changed   bool // false: the output is the input, copied
	Reencoded int  // leaf parts re-encoded as quoted-printable or base64
	Rewrapped int  // parts already quoted-printable or base64 whose lines were re-wrapped
	Folded    int  // header lines folded
	Relabeled int  // containers whose 8bit/binary label became 7bit
	Headers   int  // header blocks downgraded to ASCII
}

// Rewrite scans the message from a first open(), and if it needs changes
// under opts, streams a second open() to dst making them; otherwise it copies
// the second open() to dst unchanged (adding a final CRLF if there was none).
// Errors wrap an Err* value when the content is the cause; dst may then hold
// partial output, which the caller discards.
func Rewrite(open Opener, dst io.Writer, opts Options) (Result, error) {
	rep, err := scanOpen(open)
	if err != nil {
		return Result{}, err
	}
	src, err := open()
	if err != nil {
		return Result{}, fmt.Errorf("conform: open for rewrite: %w", err)
	}
	defer src.Close()
	if !rep.NeedsRewrite(opts) {
		if _, err := io.Copy(dst, src); err != nil {
			return Result{}, fmt.Errorf("conform: copy: %w", err)
		}
		if rep.Unterminated { // as SMTP would end the data anyway
			if _, err := dst.Write(crlf); err != nil {
				return Result{}, fmt.Errorf("conform: copy: %w", err)
			}
		}
		return Result{}, nil
	}
	if err := rep.check(opts); err != nil {
		return Result{}, err
	}
	rw := newRewriter(dst, rep, opts)
	if err := walk(src, rw); err != nil {
		return rw.res, err
	}
	if err := rw.finish(); err != nil {
		return rw.res, err
	}
	rw.res.Changed = true
	return rw.res, nil
}

func scanOpen(open Opener) (*Report, error) {
	src, err := open()
	if err != nil {
		return nil, fmt.Errorf("conform: open for scan: %w", err)
	}
	defer src.Close()
	return Scan(src)
}
