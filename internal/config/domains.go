package config

import "strings"

// DomainPolicy is the effective per-domain policy for one destination domain.
type DomainPolicy struct {
	// Match is the entry that applied: the domain itself, "*", or "" when
	// only built-in defaults applied.
	Match string
	// MaxConnections caps open connections to the domain over all bindings.
	MaxConnections int
	// MaxConnectionsPerBinding caps open connections to the domain from one
	// binding. Already resolved: never 0 (0 in the file means "same as
	// MaxConnections").
	MaxConnectionsPerBinding int
	// MaxDeliveriesPerConnection is how many deliveries one connection
	// carries before it is closed and a fresh one opened.
	MaxDeliveriesPerConnection int
}

// DomainPolicy returns the policy for domain (case-insensitive, a trailing
// dot ignored): the entry matching it exactly, else the "*" entry, else the
// built-in defaults; fields an exact entry leaves unset come from "*", then
// from the built-in defaults.
func (c *Config) DomainPolicy(domain string) DomainPolicy {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	p := DomainPolicy{
		MaxConnections:             DefaultDomainMaxConnections,
		MaxConnectionsPerBinding:   DefaultDomainMaxConnectionsPerBinding,
		MaxDeliveriesPerConnection: DefaultDomainMaxDeliveriesPerConnection,
	}
	if star := c.findDomain("*"); star != nil {
		p.Match = "*"
		star.apply(&p)
	}
	if domain != "*" {
		if exact := c.findDomain(domain); exact != nil {
			p.Match = domain
			exact.apply(&p)
		}
	}
	if p.MaxConnectionsPerBinding == 0 {
		p.MaxConnectionsPerBinding = p.MaxConnections
	}
	return p
}

func (d *Domain) apply(p *DomainPolicy) {
	if d.MaxConnections != nil {
		p.MaxConnections = *d.MaxConnections
	}
	if d.MaxConnectionsPerBinding != nil {
		p.MaxConnectionsPerBinding = *d.MaxConnectionsPerBinding
	}
	if d.MaxDeliveriesPerConnection != nil {
		p.MaxDeliveriesPerConnection = *d.MaxDeliveriesPerConnection
	}
}

// findDomain returns the entry whose match is m (already lower-cased).
func (c *Config) findDomain(m string) *Domain {
	if c.domainIndex != nil {
		if i, ok := c.domainIndex[m]; ok {
			return &c.Domains[i]
		}
		return nil
	}
	for i := range c.Domains {
		if strings.ToLower(c.Domains[i].Match) == m {
			return &c.Domains[i]
		}
	}
	return nil
}

// buildIndex makes DomainPolicy a map lookup; called by Load after Validate
// has ensured matches are unique.
func (c *Config) buildIndex() {
	c.domainIndex = make(map[string]int, len(c.Domains))
	for i, d := range c.Domains {
		c.domainIndex[strings.ToLower(d.Match)] = i
	}
}
