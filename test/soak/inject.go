package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// injectStats are the injectors' counts: messages tried, accepted (250 to
// the dot, 202 from HTTP) and refused, the refusals by reply code.
type injectStats struct {
	tried, accepted atomic.Int64
	mu              sync.Mutex
	refused         map[string]int64
}

func (s *injectStats) refuse(why string) {
	s.mu.Lock()
	s.refused[why]++
	s.mu.Unlock()
}

// recipients picks 1-2 recipients: mostly the flaky domains, some the
// steady one (which also receives the bounces' DSNs).
func recipients(rng *rand.Rand, domains []string, n int64) []string {
	k := 1 + rng.IntN(2)
	out := make([]string, 0, k)
	for i := range k {
		out = append(out, fmt.Sprintf("user%d.%d@%s", n, i, domains[rng.IntN(len(domains))]))
	}
	return out
}

func message(id, from string, to []string, rng *rand.Rand) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: %s\r\nSubject: soak %s\r\nMessage-ID: <%s>\r\nDate: %s\r\n\r\n",
		from, strings.Join(to, ", "), id, id, time.Now().Format(time.RFC1123Z))
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for range 5 + rng.IntN(60) { // 0.5-4.5 KB of body
		b.WriteString(line)
	}
	return b.Bytes()
}

// smtpInjector sends one message every interval over one session,
// reconnecting every 100 messages and after any failure, until ctx ends.
func smtpInjector(ctx context.Context, n int, addr string, interval time.Duration, domains []string, seq *atomic.Int64, st *injectStats) {
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var c *smtp.Client
	sent := 0
	closeC := func() {
		if c != nil {
			_ = c.Close()
			c = nil
		}
	}
	defer closeC()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if c == nil || sent >= 100 {
			if c != nil {
				_ = c.Quit()
				c = nil
			}
			var err error
			if c, err = smtp.Dial(addr); err != nil {
				st.tried.Add(1)
				st.refuse("smtp dial: " + errCode(err))
				continue
			}
			sent = 0
		}
		id := fmt.Sprintf("soak-%d@soak.test", seq.Add(1))
		to := recipients(rng, domains, seq.Load())
		from := "app@src.soak"
		st.tried.Add(1)
		sent++
		if err := c.SendMail(from, to, bytes.NewReader(message(id, from, to, rng))); err != nil {
			st.refuse("smtp " + errCode(err))
			closeC()
			continue
		}
		st.accepted.Add(1)
	}
}

func errCode(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// httpInjector posts one message every interval to the HTTP injection API.
func httpInjector(ctx context.Context, url string, interval time.Duration, domains []string, seq *atomic.Int64, st *injectStats) {
	rng := rand.New(rand.NewPCG(99, 2))
	cl := &http.Client{Timeout: 30 * time.Second}
	defer cl.CloseIdleConnections()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n := seq.Add(1)
		body, _ := json.Marshal(map[string]any{
			"from":       "app@src.soak",
			"recipients": recipients(rng, domains, n),
			"subject":    fmt.Sprintf("soak http %d", n),
			"text":       strings.Repeat("soak body line\n", 10+rng.IntN(100)),
		})
		st.tried.Add(1)
		// Not bound to ctx: a request cut at the end would count as
		// refused a message mtad may have accepted; cl.Timeout bounds it.
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(req)
		if err != nil {
			st.refuse("http: " + errCode(err))
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			st.accepted.Add(1)
		} else {
			st.refuse(fmt.Sprintf("http %d", resp.StatusCode))
		}
	}
}
