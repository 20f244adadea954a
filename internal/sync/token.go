package sync

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Token is a position in everything a client syncs.
type Token struct {
	Pos    int64 // global stream position
	Typing int64 // typing serial
}

func (t Token) String() string { return fmt.Sprintf("s%d_%d", t.Pos, t.Typing) }

// ParseToken reads a sync token; M_INVALID_PARAM if it is not one.
func ParseToken(s string) (Token, error) {
	bad := httpx.InvalidParam("Invalid sync token %q", s)
	a, b, ok := strings.Cut(s, "_")
	if !ok || !strings.HasPrefix(a, "s") {
		return Token{}, bad
	}
	pos, err1 := strconv.ParseInt(a[1:], 10, 64)
	typing, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || pos < 0 || typing < 0 {
		return Token{}, bad
	}
	return Token{Pos: pos, Typing: typing}, nil
}
