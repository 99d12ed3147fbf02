package hooks

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// ConnErr is the negative code a connection attempt yields instead of a file
// descriptor (Momentum's CONN_ERR), passed to post_initiate_connection_smtp
// hooks as connFD.
type ConnErr int

// The CONN_ERR codes. All are negative so that connFD < 0 means "no
// connection". Their values are stable; add new ones at the end.
const (
	ConnErrMXLookup       ConnErr = -1  // the MX lookup failed (SERVFAIL, timeout)
	ConnErrNullMX         ConnErr = -2  // the domain publishes a null MX: it takes no mail
	ConnErrNoMXReachable  ConnErr = -3  // every MX was tried and none answered
	ConnErrProhibitedIP   ConnErr = -4  // the MX resolves to an address we must not connect to
	ConnErrHostMax        ConnErr = -5  // a connection cap was reached; no attempt was made
	ConnErrSocket         ConnErr = -6  // any other socket or connect error
	ConnErrBind           ConnErr = -7  // the binding's source address could not be bound
	ConnErrRefused        ConnErr = -8  // the remote refused the connection (RST)
	ConnErrNetUnreachable ConnErr = -9  // no route to the network or host
	ConnErrTimeout        ConnErr = -10 // the connection (or its DNS) timed out
	ConnErrTLS            ConnErr = -11 // the TLS handshake failed where TLS was required
	ConnErrNXDomain       ConnErr = -12 // the domain does not exist
	ConnErrGreeting       ConnErr = -13 // the remote refused us at the greeting (e.g. 554)
	ConnErrCanceled       ConnErr = -14 // the attempt was cancelled locally (shutdown)
)

var connErrNames = map[ConnErr]string{
	ConnErrMXLookup:       "mx_lookup",
	ConnErrNullMX:         "null_mx",
	ConnErrNoMXReachable:  "no_mx_reachable",
	ConnErrProhibitedIP:   "prohibited_ip",
	ConnErrHostMax:        "host_max",
	ConnErrSocket:         "socket",
	ConnErrBind:           "bind",
	ConnErrRefused:        "refused",
	ConnErrNetUnreachable: "net_unreachable",
	ConnErrTimeout:        "timeout",
	ConnErrTLS:            "tls",
	ConnErrNXDomain:       "nxdomain",
	ConnErrGreeting:       "greeting",
	ConnErrCanceled:       "canceled",
}

// String returns a short snake_case name, fit for a metric label or a log
// field; "unknown" for a value that is not a ConnErr.
func (c ConnErr) String() string {
	if s, ok := connErrNames[c]; ok {
		return s
	}
	return "unknown"
}

// Local reports whether the code says nothing about the remote side: a cap
// reached or a local cancellation. Hooks that judge a destination's health
// (adaptive) ignore these.
func (c ConnErr) Local() bool { return c == ConnErrHostMax || c == ConnErrCanceled }

// ConnErrFromDial classifies the error of a dial (net.Dialer.DialContext and
// friends): refused, unreachable, bind failure, timeout, cancellation, DNS
// failure, and ConnErrSocket for anything else. It returns 0 for a nil error.
func ConnErrFromDial(err error) ConnErr {
	if err == nil {
		return 0
	}
	switch {
	case errors.Is(err, context.Canceled):
		return ConnErrCanceled
	case errors.Is(err, syscall.ECONNREFUSED):
		return ConnErrRefused
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETDOWN), errors.Is(err, syscall.EHOSTDOWN):
		return ConnErrNetUnreachable
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return ConnErrBind
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return ConnErrTimeout
	}
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok {
		switch {
		case dnsErr.IsNotFound:
			return ConnErrNXDomain
		case dnsErr.IsTimeout:
			return ConnErrTimeout
		}
		return ConnErrMXLookup
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return ConnErrTimeout
	}
	return ConnErrSocket
}
