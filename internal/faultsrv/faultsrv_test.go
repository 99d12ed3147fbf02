package faultsrv

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestScriptAndServe: a scripted connection follows its steps (a
// mismatched Expect is recorded), later connections get the fallback,
// Serve records the message and answers 452 past MaxRcpts, and Close
// ends a hanging connection's goroutine.
func TestScriptAndServe(t *testing.T) {
	s := Start(t, "127.0.0.1:0", Good(), Script{Greeting(), Expect("EHLO"), Reply("250 ok"), Hang()})
	talk := func(lines ...string) []string {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second)) // a hang guard
		r := bufio.NewReader(c)
		var got []string
		read := func() {
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				got = append(got, strings.TrimRight(l, "\r\n"))
				if len(l) > 3 && l[3] == ' ' {
					return
				}
			}
		}
		read() // greeting
		for _, l := range lines {
			c.Write([]byte(l + "\r\n"))
			if l != "hi" && l != "" && !strings.HasPrefix(l, "Subject") {
				read()
			}
		}
		return got
	}
	if got := talk("HELO x"); len(got) != 1 || got[0] != "220 fault.test ESMTP faultsrv" {
		t.Errorf("scripted connection: %q", got)
	}
	got := talk("EHLO x", "MAIL FROM:<a@x>", "RCPT TO:<b@y>", "DATA", "Subject: s", "", "hi", ".", "QUIT")
	if want := "221 2.0.0 bye"; got[len(got)-1] != want {
		t.Errorf("fallback connection: %q", got)
	}
	if m := s.Messages(); len(m) != 1 || m[0].Conn != 1 || m[0].From != "a@x" || len(m[0].Rcpts) != 1 || !strings.Contains(m[0].Body, "hi") {
		t.Errorf("messages %+v", m)
	}
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), `got "HELO x", want EHLO`) {
		t.Errorf("Err = %v", err)
	}
	s.Close()
	if s.Conns() != 2 {
		t.Errorf("%d connections", s.Conns())
	}
}

// TestMaxRcpts: past MaxRcpts each RCPT gets 452 4.5.3.
func TestMaxRcpts(t *testing.T) {
	s := Start(t, "127.0.0.1:0", Script{Greeting(), Serve(ServeOptions{MaxRcpts: 1})})
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	c.Write([]byte("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n"))
	var got []string
	for range 4 {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.TrimSpace(l))
	}
	if got[3] != "452 4.5.3 Too many recipients" || got[2] != "250 2.1.5 ok" {
		t.Errorf("replies %q", got)
	}
}
