package sync

import (
	"encoding/json"
	"strings"
)

// pruneFields keeps only the listed fields of an event (the filter's
// event_fields: dot-separated paths, "\." escaping a literal dot).
func pruneFields(event []byte, fields []string) []byte {
	var src map[string]any
	if json.Unmarshal(event, &src) != nil {
		return event
	}
	dst := map[string]any{}
	for _, f := range fields {
		path := splitFieldPath(f)
		copyPath(src, dst, path)
	}
	b, err := json.Marshal(dst)
	if err != nil {
		return event
	}
	return b
}

func splitFieldPath(f string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == '\\' && i+1 < len(f) && (f[i+1] == '.' || f[i+1] == '\\'):
			cur.WriteByte(f[i+1])
			i++
		case f[i] == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(f[i])
		}
	}
	return append(parts, cur.String())
}

func copyPath(src, dst map[string]any, path []string) {
	v, ok := src[path[0]]
	if !ok {
		return
	}
	if len(path) == 1 {
		dst[path[0]] = v
		return
	}
	sub, ok := v.(map[string]any)
	if !ok {
		return
	}
	next, ok := dst[path[0]].(map[string]any)
	if !ok {
		next = map[string]any{}
		dst[path[0]] = next
	}
	copyPath(sub, next, path[1:])
}
