package federation

import (
	"encoding/json"
	"slices"
	"testing"
)

// FuzzEventIDList feeds arbitrary prev_events / auth_events values of an
// event template (untrusted: another server's make_* answer) to
// eventIDList: it must not panic, and what it returns must come from the
// input.
func FuzzEventIDList(f *testing.F) {
	for _, seed := range []string{`["$a","$b"]`, `[["$a",{"sha256":"x"}]]`, `null`, `[]`, `[1]`, `[[]]`, `{"a":1}`, `[["$a"],"$b"]`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ids, err := eventIDList(json.RawMessage(raw))
		if err != nil {
			return
		}
		var items []json.RawMessage
		_ = json.Unmarshal(raw, &items)
		if len(ids) != len(items) {
			t.Fatalf("%d IDs from %d items of %s", len(ids), len(items), raw)
		}
		for _, id := range ids {
			if !slices.ContainsFunc(items, func(it json.RawMessage) bool { s, ok := itemID(it); return ok && s == id }) {
				t.Fatalf("ID %q is not in %s", id, raw)
			}
		}
	})
}

// itemID is the event ID an item of a template's list names: the item
// itself, or the first element of an [event ID, hashes] pair.
func itemID(v json.RawMessage) (string, bool) {
	var id string
	if json.Unmarshal(v, &id) == nil {
		return id, true
	}
	var pair []json.RawMessage
	if json.Unmarshal(v, &pair) != nil || len(pair) == 0 {
		return "", false
	}
	return id, json.Unmarshal(pair[0], &id) == nil
}
