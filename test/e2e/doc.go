// Package e2e holds mtad's end-to-end tests: they build cmd/mtad once, run
// the binary with a config written per test, inject mail over SMTP, and
// watch what arrives at go-smtp sinks on 127.0.0.x (MX records from a
// miekg/dns server on loopback) and what the daemon writes to its JSON log.
// They kill and restart the daemon on the same spool to check durability.
//
// The interop tests (interop_test.go, interop_postfix_test.go) inject with
// clients mtad did not write: go-smtp's client, a BDAT client, Python's
// smtplib and a private Postfix instance relaying into mtad; they need
// python3 and Postfix, which `make deps` installs (test/e2e/deps.sh).
//
// The package has no non-test code beyond this comment; it must never be
// imported.
package e2e
