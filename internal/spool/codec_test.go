package spool

import (
	"bytes"
	"errors"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	cases := []*Message{
		{Recipients: make([]Recipient, 1)}, // all zero, null sender
		testMessage(7, 3),
		{Sender: "ü@例え.jp", Received: time.Unix(0, 0), Priority: -5, Size: 1 << 40, SMTPUTF8: true, EightBit: true,
			DSNFor: "01ABC", Recipients: make([]Recipient, 1000)},
	}
	for _, m := range cases {
		got, n, err := decodeMeta(encodeMeta(m))
		if err != nil {
			t.Fatal(err)
		}
		if n != len(m.Recipients) {
			t.Fatalf("recipient count %d, want %d", n, len(m.Recipients))
		}
		got.Recipients = m.Recipients
		mustEqualMessage(t, got, m)
	}
}

func TestRecipientRoundTrip(t *testing.T) {
	t.Parallel()
	for _, r := range []Recipient{
		{},
		{Addr: "a@b", State: Bounced, Attempts: 12, NextAttempt: time.Now(), LastCode: 550, LastEnh: "5.1.1",
			LastText: "no such user", LastMX: "mx1.b", UpdatedAt: time.Now()},
		{Addr: "x@y", State: Cancelled, LastCode: -3},
	} {
		got, err := decodeRecipient(encodeRecipient(&r))
		if err != nil {
			t.Fatal(err)
		}
		if got.Addr != r.Addr || got.State != r.State || got.Attempts != r.Attempts || !got.NextAttempt.Equal(r.NextAttempt) ||
			got.LastCode != r.LastCode || got.LastEnh != r.LastEnh || got.LastText != r.LastText || got.LastMX != r.LastMX ||
			!got.UpdatedAt.Equal(r.UpdatedAt) {
			t.Fatalf("got %+v, want %+v", got, r)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	meta := encodeMeta(testMessage(1, 1))
	rcpt := encodeRecipient(&Recipient{Addr: "a@b"})
	reframe := func(payload []byte) []byte { // valid version and checksum around any payload
		e := newEncoder(len(payload))
		e.buf = append(e.buf, payload...)
		return e.finish()
	}
	cases := []struct {
		name string
		rec  []byte
		dec  func([]byte) error
	}{
		{"empty meta", nil, metaErr},
		{"short meta", []byte{1, 2, 3}, metaErr},
		{"meta bad version", append([]byte{recordVersion + 1}, meta[1:]...), metaErr},
		{"meta bad checksum", append(slices.Clone(meta[:len(meta)-1]), meta[len(meta)-1]^1), metaErr},
		{"meta truncated payload", reframe(meta[1 : len(meta)-crcLen-2]), metaErr},
		{"meta trailing bytes", reframe(append(slices.Clone(meta[1:len(meta)-crcLen]), 0)), metaErr},
		{"meta zero recipients", encodeMeta(&Message{}), metaErr},
		{"recipient bad state", reframe([]byte{1, 'a', 9, 0, 0, 0, 0, 0, 0, 0}), rcptErr},
		{"recipient bad time flag", reframe([]byte{1, 'a', 0, 0, 7, 0, 0, 0, 0, 0}), rcptErr},
		{"recipient truncated", rcpt[:len(rcpt)-1], rcptErr},
		{"body bad checksum", append(encodeBody([]byte("hello"))[:9], 0), bodyErr},
	}
	for _, tc := range cases {
		if err := tc.dec(tc.rec); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", tc.name, err)
		}
	}
}

func metaErr(b []byte) error { _, _, err := decodeMeta(b); return err }
func rcptErr(b []byte) error { _, err := decodeRecipient(b); return err }
func bodyErr(b []byte) error { _, err := decodeBody(b); return err }

// FuzzDecodeMeta: no input makes decodeMeta panic, and what it accepts
// encodes back to a record that decodes to the same message.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta(testMessage(1, 2)))
	f.Add(encodeMeta(&Message{Recipients: make([]Recipient, 1)}))
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, rec []byte) {
		m, n, err := decodeMeta(rec)
		if err != nil {
			return
		}
		m.Recipients = make([]Recipient, n)
		again := encodeMeta(m)
		m2, _, err := decodeMeta(again)
		if err != nil {
			t.Fatalf("re-encoded meta does not decode: %v", err)
		}
		m2.Recipients = m.Recipients
		if !bytes.Equal(encodeMeta(m2), again) {
			t.Fatal("re-encoding is not stable")
		}
	})
}

// FuzzDecodeRecipient: likewise for recipient records.
func FuzzDecodeRecipient(f *testing.F) {
	f.Add(encodeRecipient(&Recipient{Addr: "a@b", State: Delivered, LastCode: 250, UpdatedAt: time.Unix(1, 2)}))
	f.Add(encodeRecipient(&Recipient{}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		r, err := decodeRecipient(rec)
		if err != nil {
			return
		}
		again := encodeRecipient(&r)
		r2, err := decodeRecipient(again)
		if err != nil || !bytes.Equal(encodeRecipient(&r2), again) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
	})
}

// FuzzDecodeBody: a body record decodes to exactly what was framed, and a
// damaged one is refused.
func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte("Subject: hi\r\n\r\nhello\r\n"), 3)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, body []byte, flip int) {
		rec := encodeBody(body)
		got, err := decodeBody(rec)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("round trip: %v", err)
		}
		if flip < 0 {
			flip = -flip
		}
		rec[flip%len(rec)] ^= 0x01 // crc32 detects every single-bit error
		if _, err := decodeBody(rec); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped bit %d not detected", flip%len(rec))
		}
	})
}

func TestIDFormatParse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		ms uint64
		hi uint16
		lo uint64
	}{
		{0, 0, 0},
		{1<<48 - 1, 0xffff, 1<<64 - 1},
		{1700000000000, 0x1234, 0xdeadbeefcafebabe},
	}
	for _, c := range cases {
		id := formatID(c.ms, c.hi, c.lo)
		if len(id) != idLen {
			t.Fatalf("%q: length %d", id, len(id))
		}
		ms, hi, lo, ok := parseID(id)
		if !ok || ms != c.ms || hi != c.hi || lo != c.lo {
			t.Fatalf("parse(%q) = %d %x %x %v, want %d %x %x", id, ms, hi, lo, ok, c.ms, c.hi, c.lo)
		}
	}
	for _, bad := range []string{"", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0000000000000000000000000U", "0000"} {
		if _, _, _, ok := parseID(bad); ok {
			t.Fatalf("parseID(%q) accepted", bad)
		}
	}
}

func TestIDsSortedAndUnique(t *testing.T) {
	t.Parallel()
	// A clock that stands still and then steps back must not break order.
	var mu sync.Mutex
	now := time.UnixMilli(1700000000000)
	g := &idGen{now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
	const workers, each = 16, 2000
	perWorker := make([][]string, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				perWorker[w] = append(perWorker[w], g.next())
				if w == 0 && i == each/2 {
					mu.Lock()
					now = now.Add(-time.Hour)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, ids := range perWorker {
		if !sort.StringsAreSorted(ids) {
			t.Fatal("ids of one goroutine not increasing")
		}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("duplicate id %s", id)
			}
			seen[id] = true
		}
	}
	// Real clock, and ordered after a seed from the "future".
	g2 := &idGen{now: time.Now}
	future := formatID(uint64(time.Now().Add(time.Hour).UnixMilli()), 5, 5)
	g2.seed(future)
	if id := g2.next(); id <= future {
		t.Fatalf("id %s not after seed %s", id, future)
	}
	if ts, ok := IDTime(g2.next()); !ok || ts.Before(time.Now()) {
		t.Fatalf("IDTime: %v %v", ts, ok)
	}
}

func TestSpoolIDsAcrossGoroutines(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ids := make(chan string, 64*100)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := ""
			for i := 0; i < 100; i++ {
				id := s.NewID()
				if id <= prev {
					t.Errorf("id %s after %s", id, prev)
				}
				prev = id
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
}
