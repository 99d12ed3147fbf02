package conform_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mtad/mtad/internal/conform"
)

// How injection uses the package: a cheap Scan on every message, and a
// Rewrite only when it says so; a refusal carries its SMTP reply.
func ExampleRewrite() {
	body := []byte("Subject: report\r\n\r\n" + strings.Repeat("data ", 300) + "\r\n")
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }

	rep, _ := conform.Scan(bytes.NewReader(body))
	fmt.Println("long lines:", rep.LongLines, "needs rewrite:", rep.NeedsRewrite(conform.Options{}))

	var out bytes.Buffer
	res, err := conform.Rewrite(open, &out, conform.Options{})
	fmt.Println(res.Reencoded, err)
	fmt.Println(strings.SplitN(out.String(), "\r\n", 4)[1:3])

	_, err = conform.Rewrite(func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("Subject: " + strings.Repeat("x", 1000) + "\r\n\r\n")), nil
	}, io.Discard, conform.Options{})
	var ce *conform.Error
	if errors.As(err, &ce) {
		fmt.Println(ce.SMTPError().Code, ce.SMTPError().EnhancedCode)
	}
	// Output:
	// long lines: true needs rewrite: true
	// 1 <nil>
	// [MIME-Version: 1.0 Content-Transfer-Encoding: quoted-printable]
	// 554 [5 6 0]
}
