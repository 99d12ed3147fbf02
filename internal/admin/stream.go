package admin

import (
	"io"
	"net/http"
	"time"
)

// streamChunk is how much of a streamed body each write deadline covers.
// 64 KiB at the slowest link an operator might use (a 64 kbit/s VPN)
// takes 8 s, well inside the default 30 s write timeout.
const streamChunk = 64 << 10

// streamBody copies body to w, giving each chunk of at most streamChunk
// bytes its own write deadline of the write timeout. writeDeadline bounds
// a whole answer, which suits a JSON page but cuts a 50 MB body to a slow
// operator short: here a stalled client is still cut off, after one
// write timeout without progress, but a slow one is not.
func (s *Server) streamBody(w http.ResponseWriter, body io.Reader) (int64, error) {
	dw := &deadlineWriter{w: w, rc: http.NewResponseController(w), d: s.opts.WriteTimeout}
	return io.Copy(dw, body)
}

// deadlineWriter extends the connection's write deadline before each
// chunk it writes.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
	d  time.Duration
}

func (dw *deadlineWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), streamChunk)]
		// An error means the connection cannot take deadlines (not a
		// net.Conn the server made); nothing to bound then.
		_ = dw.rc.SetWriteDeadline(time.Now().Add(dw.d))
		k, err := dw.w.Write(c)
		n += k
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}
