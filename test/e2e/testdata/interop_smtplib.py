"""Injects messages into an SMTP server with Python's smtplib, for mtad's
interop test (test/e2e/interop_test.go, TestInteropPythonSmtplib).

Usage: python3 interop_smtplib.py HOST PORT SPEC.json

SPEC is a JSON list of {"from", "to": [...], "file", "mail_options": [...]};
each file holds one message as bytes with CRLF line ends, not dot-stuffed
(smtplib does the stuffing). All messages go over one session with
SMTP.sendmail. Prints "sent <file>" per message; on any refusal prints the
error to stderr and exits 1.
"""
import json
import smtplib
import sys


def main():
    host, port, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(spec, encoding="utf-8") as f:
        msgs = json.load(f)
    # timeout bounds every socket operation: a hung server fails the test
    # instead of stalling it.
    with smtplib.SMTP(host, port, local_hostname="python.interop", timeout=30) as s:
        s.ehlo()
        for ext in ("pipelining", "8bitmime", "smtputf8"):
            if not s.has_extn(ext):
                sys.exit("EHLO reply does not offer " + ext)
        for m in msgs:
            with open(m["file"], "rb") as f:
                data = f.read()
            try:
                refused = s.sendmail(m["from"], m["to"], data, mail_options=m.get("mail_options", []))
            except smtplib.SMTPException as e:
                sys.exit("%s: %r" % (m["file"], e))
            if refused:
                sys.exit("%s: recipients refused: %r" % (m["file"], refused))
            print("sent", m["file"], flush=True)
        s.quit()


if __name__ == "__main__":
    main()
