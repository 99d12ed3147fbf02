package mx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// NormalizeDomain checks that s is a host name mtad can look up and returns
// it lower-cased without a trailing dot. Only ASCII names are accepted: an
// internationalised domain must be converted to its A-label (xn--…) first,
// which Canonical does; configuration (routes) must name A-labels.
func NormalizeDomain(s string) (string, error) {
	d := strings.TrimSuffix(s, ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	if len(d) > 253 {
		return "", fmt.Errorf("domain is %d octets long, longer than 253", len(d))
	}
	labels := 0
	for label := range strings.SplitSeq(d, ".") {
		labels++
		if label == "" {
			return "", errors.New("domain has an empty label")
		}
		if len(label) > 63 {
			return "", fmt.Errorf("domain label %q is longer than 63 octets", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("domain label %q starts or ends with a hyphen", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			case c >= 0x80:
				return "", errors.New("domain is not ASCII: convert it to an A-label (xn--) first")
			default:
				return "", fmt.Errorf("domain contains the character %q", c)
			}
		}
	}
	// A name whose last label is all digits is an IP address (or nothing):
	// no top-level domain is numeric, and a dotted quad is not a domain.
	last := d[strings.LastIndexByte(d, '.')+1:]
	if strings.Trim(last, "0123456789") == "" {
		return "", fmt.Errorf("domain's last label %q is numeric", last)
	}
	return strings.ToLower(d), nil
}

// route is a parsed Route: exactly one of addr (an IP literal) and name is set.
type route struct {
	domain string
	addr   netip.Addr
	name   string
	port   uint16
}

// parseRoute validates an operator-configured route. Its errors name the
// route, since they end up in a config validation message.
func parseRoute(r Route) (route, error) {
	d, err := NormalizeDomain(r.Domain)
	if err != nil {
		return route{}, fmt.Errorf("route %q: domain: %w", r.Domain, err)
	}
	host, portStr, err := net.SplitHostPort(r.Host)
	if err != nil {
		return route{}, fmt.Errorf("route for %s: host %q: want host:port: %w", d, r.Host, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return route{}, fmt.Errorf("route for %s: host %q: port %q is not a number in 1-65535", d, r.Host, portStr)
	}
	rt := route{domain: d, port: uint16(port)}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return route{}, fmt.Errorf("route for %s: host %q: addresses with a zone are not supported", d, r.Host)
		}
		rt.addr = a.Unmap()
		return rt, nil
	}
	name, err := NormalizeDomain(host)
	if err != nil {
		return route{}, fmt.Errorf("route for %s: host %q: %w", d, r.Host, err)
	}
	rt.name = name
	return rt, nil
}
