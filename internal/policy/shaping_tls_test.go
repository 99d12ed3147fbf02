package policy

import "testing"

// TestShapingTLSKeys: tls, mta_sts and dane resolve like the other keys,
// their defaults coming from delivery.tls and the tls: section.
func TestShapingTLSKeys(t *testing.T) {
	t.Parallel()
	s := loadShaper(t, `
dns:
  servers: [127.0.0.1:53]
delivery:
  tls: opportunistic_no_fallback
tls:
  mta_sts: true
  dane: false
bindings:
  - name: b1
    address: 127.0.0.2
shaping:
  providers:
    - name: big
      match_mx: [".big.test"]
      tls: verified
  domains:
    - match: "*.example.com"
      mta_sts: false
    - match: bank.example.com
      dane: true
      bindings:
        - binding: b1
          tls: required
`)
	for _, tt := range []struct {
		domain, binding string
		mx              []string
		tls             string
		sts, dane       bool
		src             [3]string // sources of tls, mta_sts, dane
	}{
		{"other.test", "", nil, "opportunistic_no_fallback", true, false, [3]string{"delivery", "tls", "tls"}},
		{"x.test", "", []string{"mx1.big.test"}, "verified", true, false, [3]string{"provider big", "tls", "tls"}},
		{"a.example.com", "", nil, "opportunistic_no_fallback", false, false, [3]string{"delivery", "domain *.example.com", "tls"}},
		{"bank.example.com", "", nil, "opportunistic_no_fallback", false, true, [3]string{"delivery", "domain *.example.com", "domain bank.example.com"}},
		{"bank.example.com", "b1", nil, "required", false, true, [3]string{"domain bank.example.com binding b1", "domain *.example.com", "domain bank.example.com"}},
	} {
		got := s.Resolve(tt.domain, tt.mx, tt.binding)
		if got.TLS != tt.tls || got.MTASTS != tt.sts || got.DANE != tt.dane {
			t.Errorf("%s/%s: tls=%s mta_sts=%v dane=%v, want %s %v %v", tt.domain, tt.binding, got.TLS, got.MTASTS, got.DANE, tt.tls, tt.sts, tt.dane)
		}
		src := [3]string{got.Sources["tls"], got.Sources["mta_sts"], got.Sources["dane"]}
		if src != tt.src {
			t.Errorf("%s/%s: sources %q, want %q", tt.domain, tt.binding, src, tt.src)
		}
	}
}
