package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// logSummary is what a daemon's log says about a run.
type logSummary struct {
	latencies []float64      // seconds from reception to delivery, one per delivered recipient
	events    map[string]int // count per outcome ("delivered", "deferred", "bounced", ...)
	source    string         // how latencies were obtained, for the notes
}

// maxLine bounds one log line; longer lines are skipped, not fatal.
const maxLine = 1 << 20

// parsePostfixLog reads a Postfix maillog. Each delivery line ("QID:
// to=<…>, relay=…, delay=0.12, delays=a/b/c/d, dsn=2.0.0, status=sent …")
// counts under its status; sent ones give their delay=, which Postfix
// measures from the message's arrival in the queue to the end of the
// delivery.
func parsePostfixLog(r io.Reader) (logSummary, error) {
	s := logSummary{events: map[string]int{}, source: "postfix maillog delay= (queue-file creation → remote 250)"}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		line := sc.Bytes()
		status := field(line, "status=")
		if status == "" || !bytes.Contains(line, []byte(" to=<")) {
			continue
		}
		s.events[status]++
		if status != "sent" {
			continue
		}
		if d, err := strconv.ParseFloat(strings.TrimSuffix(field(line, "delay="), ","), 64); err == nil && d >= 0 {
			s.latencies = append(s.latencies, d)
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("reading postfix log: %w", err)
	}
	return s, nil
}

// field returns the value after key (" key" at a word start) up to the next
// space or comma.
func field(line []byte, key string) string {
	i := bytes.Index(line, []byte(" "+key))
	if i < 0 {
		return ""
	}
	v := line[i+1+len(key):]
	if j := bytes.IndexAny(v, " ,"); j >= 0 {
		v = v[:j]
	}
	return string(v)
}

// mtadRecord is the part of an mtad delivery-log record we read (see
// internal/logging).
type mtadRecord struct {
	Event   string   `json:"event"`
	QueueID string   `json:"queue_id"`
	TS      string   `json:"ts"`
	Delay   *float64 `json:"delay"` // seconds since reception, on delivery events
}

// zap's ISO8601 encoder layout.
const zapISO8601 = "2006-01-02T15:04:05.000Z0700"

// parseMtadLog reads mtad's JSON log. Each record with an "event" counts
// under it; a "delivered" record gives its "delay" (seconds since the
// message was received) or, lacking one, its ts minus the ts of the
// message's "received" record. Lines that are not JSON objects are skipped.
func parseMtadLog(r io.Reader) (logSummary, error) {
	s := logSummary{events: map[string]int{}}
	received := map[string]time.Time{}
	type pending struct {
		id string
		at time.Time
	}
	var noDelay []pending
	usedDelay, usedTS := 0, 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var rec mtadRecord
		if json.Unmarshal(line, &rec) != nil || rec.Event == "" {
			continue
		}
		s.events[rec.Event]++
		switch rec.Event {
		case "received":
			if at, err := parseTS(rec.TS); err == nil && rec.QueueID != "" {
				if _, seen := received[rec.QueueID]; !seen {
					received[rec.QueueID] = at
				}
			}
		case "delivered":
			if rec.Delay != nil && *rec.Delay >= 0 && !math.IsInf(*rec.Delay, 0) {
				s.latencies = append(s.latencies, *rec.Delay)
				usedDelay++
			} else if at, err := parseTS(rec.TS); err == nil {
				noDelay = append(noDelay, pending{rec.QueueID, at})
			}
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("reading mtad log: %w", err)
	}
	// A delivered record may come before its received record only if
	// lines interleave oddly; match after reading everything.
	for _, p := range noDelay {
		if at, ok := received[p.id]; ok && !p.at.Before(at) {
			s.latencies = append(s.latencies, p.at.Sub(at).Seconds())
			usedTS++
		}
	}
	switch {
	case usedDelay > 0 && usedTS == 0:
		s.source = "mtad log: delay of each delivered record (reception → remote 250)"
	case usedTS > 0:
		s.source = fmt.Sprintf("mtad log: %d delivered records' delay, %d from ts(delivered) − ts(received) (ms resolution)", usedDelay, usedTS)
	default:
		s.source = "mtad log: no delivered record with a usable delay or matching received record"
	}
	return s, nil
}

// parseTS reads a log "ts": zap's ISO8601 or RFC 3339 text, or a number of
// seconds since the epoch.
func parseTS(v string) (time.Time, error) {
	for _, layout := range []string{zapISO8601, time.RFC3339Nano} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) {
		return time.Time{}, fmt.Errorf("unparsable ts %q", v)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of xs,
// or NaN for none. It sorts xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sort.Float64s(xs)
	rank := int(math.Ceil(p / 100 * float64(len(xs))))
	return xs[min(max(rank, 1), len(xs))-1]
}
