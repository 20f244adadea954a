package rooms

import (
	"context"
	"encoding/json"
	"net"
	"strings"

	"github.com/palpo-go/palpo/internal/cache"
)

// mRoomServerACL is the server ACL state event type.
const mRoomServerACL = "m.room.server_acl"

// ServerAllowed reports whether a room's server ACL (m.room.server_acl in
// its current state) lets serverName take part in the room. Federation
// calls it for every request about a room. Rooms without an ACL allow
// every server.
func (e *Engine) ServerAllowed(ctx context.Context, roomID, serverName string) (bool, error) {
	ev, err := e.CurrentStateEvent(ctx, roomID, mRoomServerACL, "")
	if err != nil || ev == nil {
		return err == nil, err
	}
	// A redaction changes the content under the same event ID.
	key := ev.EventID() + "\x00" + ev.RedactedBy
	acl, ok := compiledACLs.Get(key)
	if !ok {
		acl = parseServerACL(ev.Content())
		compiledACLs.Put(key, acl)
	}
	return acl.allows(serverName), nil
}

// compiledACLs memoises parsed ACL events by event ID (and redaction). An
// event's content never changes under its ID, so entries are never stale
// and the memo is safe to share between engines.
var compiledACLs = cache.NewLRU[string, *serverACL](1024)

// serverACL is the parsed content of an m.room.server_acl event, patterns
// lower-cased.
type serverACL struct {
	allowIPLiterals bool
	allow, deny     []string
}

// parseServerACL reads m.room.server_acl content the way the spec says to:
// allow_ip_literals is true unless it is the boolean false, allow and deny
// are empty unless they are arrays, and entries that are not strings are
// ignored.
func parseServerACL(content []byte) *serverACL {
	var c struct {
		AllowIPLiterals json.RawMessage `json:"allow_ip_literals"`
		Allow           json.RawMessage `json:"allow"`
		Deny            json.RawMessage `json:"deny"`
	}
	_ = json.Unmarshal(content, &c)
	acl := &serverACL{allowIPLiterals: true}
	var b bool
	if json.Unmarshal(c.AllowIPLiterals, &b) == nil {
		acl.allowIPLiterals = b
	}
	acl.allow = globList(c.Allow)
	acl.deny = globList(c.Deny)
	return acl
}

func globList(raw json.RawMessage) []string {
	var items []any
	if json.Unmarshal(raw, &items) != nil {
		return nil
	}
	var out []string
	for _, it := range items {
		if s, ok := it.(string); ok {
			out = append(out, strings.ToLower(s))
		}
	}
	return out
}

// allows applies the spec's order: IP literals when they are denied, then
// the deny list, then the allow list, else deny. The port is not part of
// the match.
func (a *serverACL) allows(serverName string) bool {
	host := strings.ToLower(serverHost(serverName))
	if !a.allowIPLiterals && isIPLiteral(host) {
		return false
	}
	for _, g := range a.deny {
		if globMatch(g, host) {
			return false
		}
	}
	for _, g := range a.allow {
		if globMatch(g, host) {
			return true
		}
	}
	return false
}

// serverHost strips the port from a server name ("[::1]:8448" → "[::1]").
func serverHost(name string) string {
	if strings.HasPrefix(name, "[") {
		if end := strings.IndexByte(name, ']'); end >= 0 {
			return name[:end+1]
		}
		return name
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && strings.Count(name, ":") == 1 {
		return name[:i]
	}
	return name
}

// isIPLiteral reports whether a host is an IPv4 address or an IPv6
// address (bracketed as in server names, or bare).
func isIPLiteral(host string) bool {
	return net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")) != nil
}

// globMatch matches s against a glob (the appendix's "glob-style
// matching": * is zero or more characters, ? exactly one). It runs in
// O(len(glob)·len(s)) by resuming from the last star only.
func globMatch(glob, s string) bool {
	g, str := []rune(glob), []rune(s)
	gi, si := 0, 0
	star, resume := -1, 0
	for si < len(str) {
		switch {
		case gi < len(g) && (g[gi] == '?' || g[gi] == str[si]):
			gi++
			si++
		case gi < len(g) && g[gi] == '*':
			star, resume = gi, si
			gi++
		case star >= 0:
			resume++
			gi, si = star+1, resume
		default:
			return false
		}
	}
	for gi < len(g) && g[gi] == '*' {
		gi++
	}
	return gi == len(g)
}
