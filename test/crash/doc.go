// Package crash is mtad's crash harness (issue 12, point 2): it builds the
// real cmd/mtad binary, runs it on a spool in a temporary directory, injects
// mail from many concurrent SMTP clients into go-smtp sinks on loopback that
// accept slowly and record every Message-ID they take, and SIGKILLs the
// daemon at seeded random moments — during injection, during delivery,
// while a DSN is owed, during start-up recovery — restarting it each time.
// At the end it checks invariants 1, 2 and 4 of DESIGN.md: every message
// that got a 250 was delivered or bounced with a DSN, duplicates fall
// inside the documented unsynced window, and nothing without a 250 (or an
// answer lost to the kill) reaches a sink.
//
// `make test` runs a short round (MTAD_CRASH unset); `make test-crash` sets
// MTAD_CRASH=full for the 20,000-message run. MTAD_CRASH_SEED replays a run.
//
// The package has no non-test code beyond this comment; it must never be
// imported, and it talks to nothing but 127.0.0.1.
package crash
