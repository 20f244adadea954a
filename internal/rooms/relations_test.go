package rooms_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// relate sends, as c, an event of type typ relating to parent with relType.
func (rm *readRoom) relate(c *testutil.Client, typ, relType, parent string, extra map[string]any) string {
	rm.t.Helper()
	content := map[string]any{"m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}}
	for k, v := range extra {
		content[k] = v
	}
	return rm.send(c, typ, content)
}

// reply sends a thread reply as c to root.
func (rm *readRoom) reply(c *testutil.Client, root, body string) string {
	rm.t.Helper()
	return rm.relate(c, "m.room.message", "m.thread", root, map[string]any{"msgtype": "m.text", "body": body})
}

// react sends an annotation as c to parent.
func (rm *readRoom) react(c *testutil.Client, parent, key string) string {
	rm.t.Helper()
	content := map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": parent, "key": key}}
	return rm.send(c, "m.reaction", content)
}

// edit sends an edit as c of parent.
func (rm *readRoom) edit(c *testutil.Client, parent, body string) string {
	rm.t.Helper()
	return rm.relate(c, "m.room.message", "m.replace", parent, map[string]any{
		"msgtype": "m.text", "body": "* " + body, "m.new_content": map[string]any{"msgtype": "m.text", "body": body},
	})
}

// relations requests /relations/{parent}{rest} as c.
func (rm *readRoom) relations(c *testutil.Client, parent, rest string) *page {
	rm.t.Helper()
	return rm.get(c, rm.path("v1", "/relations/"+url.PathEscape(parent)+rest))
}

// aggregations is the decoded unsigned["m.relations"] of an event.
type aggregations struct {
	Thread *struct {
		LatestEvent  map[string]json.RawMessage `json:"latest_event"`
		Count        int                        `json:"count"`
		Participated bool                       `json:"current_user_participated"`
	} `json:"m.thread"`
	Replace   map[string]json.RawMessage `json:"m.replace"`
	Reference *struct {
		Chunk []map[string]string `json:"chunk"`
	} `json:"m.reference"`
}

// relationsOf decodes the bundled aggregations of ev (zero if none).
func relationsOf(t *testing.T, ev map[string]json.RawMessage) aggregations {
	t.Helper()
	var u struct {
		Relations aggregations `json:"m.relations"`
	}
	if raw, ok := ev["unsigned"]; ok {
		if err := json.Unmarshal(raw, &u); err != nil {
			t.Fatalf("unsigned: %v", err)
		}
	}
	return u.Relations
}

// findEvent returns the event with ID id among evs.
func findEvent(t *testing.T, evs []map[string]json.RawMessage, id string) map[string]json.RawMessage {
	t.Helper()
	for _, ev := range evs {
		if str(ev, "event_id") == id {
			return ev
		}
	}
	t.Fatalf("event %s not found among %v", id, ids(evs))
	return nil
}

func TestRelations(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		rm.join(alice, bob)
		rm.join(alice, carol)
		root := rm.say(alice, "root")
		r1 := rm.react(bob, root, "👍")
		t1 := rm.reply(bob, root, "t1")
		t2 := rm.reply(alice, root, "t2")
		e1 := rm.edit(alice, root, "root, edited")
		bad := rm.edit(bob, root, "not bob's to edit")
		ref := rm.relate(carol, "m.room.message", "m.reference", root, map[string]any{"msgtype": "m.text", "body": "see root"})
		r2 := rm.react(carol, root, "🎉")
		gone := rm.react(bob, root, "👎")
		bob.MustDo(200, "PUT", rm.path("v3", "/redact/"+url.PathEscape(gone)+"/x1"), map[string]any{})
		gc := rm.react(carol, t1, "👀")                                  // depth 2
		ggc := rm.relate(bob, "m.room.message", "m.reference", gc, nil) // depth 3
		rm.relate(bob, "m.room.message", "m.reference", ggc, nil)       // depth 4: beyond recursion

		direct := []string{r2, ref, bad, e1, t2, t1, r1}
		// Default: newest first, 5 per page, next_batch until the end.
		p1 := rm.relations(alice, root, "")
		if !slices.Equal(ids(p1.Chunk), direct[:5]) || p1.NextBatch == "" || p1.PrevBatch != "" || p1.Depth != nil {
			t.Fatalf("page 1: %v next %q prev %q", ids(p1.Chunk), p1.NextBatch, p1.PrevBatch)
		}
		p2 := rm.relations(alice, root, "?from="+url.QueryEscape(p1.NextBatch))
		if !slices.Equal(ids(p2.Chunk), direct[5:]) || p2.NextBatch != "" || p2.PrevBatch != p1.NextBatch {
			t.Fatalf("page 2: %v next %q prev %q", ids(p2.Chunk), p2.NextBatch, p2.PrevBatch)
		}
		oldestFirst := slices.Clone(direct)
		slices.Reverse(oldestFirst)
		if p := rm.relations(alice, root, "?dir=f&limit=100"); !slices.Equal(ids(p.Chunk), oldestFirst) {
			t.Fatalf("dir=f: %v", ids(p.Chunk))
		}
		// to stops the walk.
		if p := rm.relations(alice, root, "?limit=100&to="+url.QueryEscape(p1.NextBatch)); !slices.Equal(ids(p.Chunk), direct[:5]) {
			t.Fatalf("to: %v", ids(p.Chunk))
		}
		// By relationship type, and by event type.
		if p := rm.relations(alice, root, "/m.thread"); !slices.Equal(ids(p.Chunk), []string{t2, t1}) {
			t.Fatalf("m.thread: %v", ids(p.Chunk))
		}
		if p := rm.relations(alice, root, "/m.annotation/m.reaction"); !slices.Equal(ids(p.Chunk), []string{r2, r1}) {
			t.Fatalf("m.annotation/m.reaction: %v", ids(p.Chunk))
		}
		if p := rm.relations(alice, root, "/m.annotation/m.room.message"); len(p.Chunk) != 0 {
			t.Fatalf("m.annotation/m.room.message: %v", ids(p.Chunk))
		}
		// recurse follows relations of relations three levels deep.
		p := rm.relations(alice, root, "?recurse=true&limit=100")
		if want := append([]string{ggc, gc}, direct...); !slices.Equal(ids(p.Chunk), want) || p.Depth == nil || *p.Depth != 3 {
			t.Fatalf("recurse: %v depth %v, want %v", ids(p.Chunk), p.Depth, want)
		}
		if p := rm.relations(alice, root, "/m.annotation?recurse=true"); !slices.Equal(ids(p.Chunk), []string{gc, r2, r1}) {
			t.Fatalf("recurse m.annotation: %v", ids(p.Chunk))
		}
		if p := rm.relations(alice, root, "?recurse=false&limit=100"); !slices.Equal(ids(p.Chunk), direct) || p.Depth == nil || *p.Depth != 1 {
			t.Fatalf("recurse=false: %v depth %v", ids(p.Chunk), p.Depth)
		}

		// Bundled aggregations on the root, as each user sees them.
		for _, c := range []struct {
			who          *testutil.Client
			participated bool
		}{{alice, true}, {bob, true}, {carol, false}} {
			evs := rm.messages(c.who, "dir=b&limit=50").Chunk
			agg := relationsOf(t, findEvent(t, evs, root))
			if agg.Thread == nil || agg.Thread.Count != 2 || str(agg.Thread.LatestEvent, "event_id") != t2 || agg.Thread.Participated != c.participated {
				t.Fatalf("m.thread for %s: %+v", c.who.UserID, agg.Thread)
			}
			if str(agg.Replace, "event_id") != e1 {
				t.Fatalf("m.replace: %v", agg.Replace)
			}
			if agg.Reference == nil || len(agg.Reference.Chunk) != 1 || agg.Reference.Chunk[0]["event_id"] != ref {
				t.Fatalf("m.reference: %+v", agg.Reference)
			}
			// The thread reply t1 carries no aggregation (its only child is an annotation).
			if a := relationsOf(t, findEvent(t, evs, t1)); a.Thread != nil || a.Replace != nil || a.Reference != nil {
				t.Fatalf("t1 aggregations: %+v", a)
			}
		}
		// /context and /relations bundle too; a newer edit wins, and
		// redacting it brings the previous one back.
		e2 := rm.edit(alice, root, "root, edited again")
		ctx := rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(root)))
		if agg := relationsOf(t, ctx.Event); str(agg.Replace, "event_id") != e2 || agg.Thread == nil {
			t.Fatalf("context aggregations: %+v", agg)
		}
		alice.MustDo(200, "PUT", rm.path("v3", "/redact/"+url.PathEscape(e2)+"/x2"), map[string]any{})
		ctx = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(root)))
		if agg := relationsOf(t, ctx.Event); str(agg.Replace, "event_id") != e1 {
			t.Fatalf("after redacting the newest edit: %v", agg.Replace)
		}
		if p := rm.relations(alice, gc, "?recurse=true"); len(p.Chunk) != 2 || str(p.Chunk[1], "event_id") != ggc {
			t.Fatalf("recursive relations of gc: %v", ids(p.Chunk))
		}
		if agg := relationsOf(t, findEvent(t, rm.relations(alice, t1, "").Chunk, gc)); agg.Reference == nil || agg.Reference.Chunk[0]["event_id"] != ggc {
			t.Fatalf("gc in relations of t1: %+v", agg.Reference)
		}
		// Encrypted children are matched by their outer type.
		enc := rm.relate(bob, "m.room.encrypted", "m.thread", root, map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"})
		if p := rm.relations(alice, root, "/m.thread/m.room.encrypted"); !slices.Equal(ids(p.Chunk), []string{enc}) {
			t.Fatalf("m.thread/m.room.encrypted: %v", ids(p.Chunk))
		}
		if p := rm.relations(alice, root, "/m.thread/m.room.message"); !slices.Equal(ids(p.Chunk), []string{t2, t1}) {
			t.Fatalf("m.thread/m.room.message: %v", ids(p.Chunk))
		}
		ctx = rm.get(carol, rm.path("v3", "/context/"+url.PathEscape(root)))
		if agg := relationsOf(t, ctx.Event); agg.Thread == nil || agg.Thread.Count != 3 || str(agg.Thread.LatestEvent, "event_id") != enc {
			t.Fatalf("thread after an encrypted reply: %+v", agg.Thread)
		}
		// Redacting the original drops its edits from the aggregation.
		alice.MustDo(200, "PUT", rm.path("v3", "/redact/"+url.PathEscape(root)+"/x3"), map[string]any{})
		ctx = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(root)))
		if agg := relationsOf(t, ctx.Event); agg.Replace != nil {
			t.Fatalf("redacted original still bundles its edit: %v", agg.Replace)
		}
	})
}

func TestRelationsHistoryVisibility(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}},
		}})
		early := rm.say(alice, "early")
		rm.reply(alice, early, "early reply")
		rm.join(alice, bob)
		rm.reply(alice, early, "late reply")
		// The parent is from before bob joined: 404, and no thread for him.
		if r := bob.Do("GET", rm.path("v1", "/relations/"+url.PathEscape(early)), nil); r.Status != 404 || r.ErrCode() != "M_NOT_FOUND" {
			t.Fatalf("invisible parent: %d %s", r.Status, r.Body)
		}
		if p := rm.get(bob, rm.path("v1", "/threads")); len(p.Chunk) != 0 {
			t.Fatalf("bob sees threads rooted before his join: %v", ids(p.Chunk))
		}
		// After leaving, bob sees no reply sent after his leave.
		root := rm.say(alice, "root")
		rm.reply(bob, root, "bob's reply")
		bob.MustDo(200, "POST", rm.path("v3", "/leave"), map[string]any{})
		rm.reply(alice, root, "after bob left")
		p := rm.get(bob, rm.path("v1", "/relations/"+url.PathEscape(root)))
		if got := bodies(p.Chunk); !slices.Equal(got, []string{"bob's reply"}) {
			t.Fatalf("bob's relations after leaving: %v", got)
		}
		agg := relationsOf(t, findEvent(t, rm.get(bob, rm.path("v1", "/threads")).Chunk, root))
		if agg.Thread == nil || agg.Thread.Count != 1 || bodies([]map[string]json.RawMessage{agg.Thread.LatestEvent})[0] != "bob's reply" {
			t.Fatalf("bob's thread summary after leaving: %+v", agg.Thread)
		}
	})
}

func TestThreads(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		rm.join(alice, bob)
		rm.join(alice, carol)
		a := rm.say(alice, "A")
		bRoot := rm.say(bob, "B")
		c := rm.say(alice, "C")
		rm.say(alice, "not a thread")
		rm.reply(carol, bRoot, "b1")
		rm.reply(bob, a, "a1")
		cReply := rm.reply(carol, c, "c1")
		rm.reply(carol, bRoot, "b2")
		threads := func(who *testutil.Client, query string) *page {
			t.Helper()
			return rm.get(who, rm.path("v1", "/threads"+query))
		}
		if p := threads(alice, ""); !slices.Equal(ids(p.Chunk), []string{bRoot, c, a}) || p.NextBatch != "" {
			t.Fatalf("all threads: %v next %q", bodies(p.Chunk), p.NextBatch)
		}
		// One by one with next_batch.
		var got []string
		from := ""
		for range 5 {
			q := "?limit=1"
			if from != "" {
				q += "&from=" + url.QueryEscape(from)
			}
			p := threads(alice, q)
			got = append(got, ids(p.Chunk)...)
			if from = p.NextBatch; from == "" {
				break
			}
		}
		if !slices.Equal(got, []string{bRoot, c, a}) {
			t.Fatalf("paginated threads: %v", got)
		}
		for _, tc := range []struct {
			who  *testutil.Client
			want []string
		}{{alice, []string{c, a}}, {bob, []string{bRoot, a}}, {carol, []string{bRoot, c}}} {
			if p := threads(tc.who, "?include=participated"); !slices.Equal(ids(p.Chunk), tc.want) {
				t.Fatalf("participated for %s: %v, want %v", tc.who.UserID, bodies(p.Chunk), tc.want)
			}
		}
		p := threads(bob, "")
		agg := relationsOf(t, p.Chunk[0])
		if agg.Thread == nil || agg.Thread.Count != 2 || !agg.Thread.Participated || bodies([]map[string]json.RawMessage{agg.Thread.LatestEvent})[0] != "b2" {
			t.Fatalf("bundled thread of B: %+v", agg.Thread)
		}
		// Redacting C's only reply ends that thread.
		carol.MustDo(200, "PUT", rm.path("v3", "/redact/"+url.PathEscape(cReply)+"/x"), map[string]any{})
		if p := threads(alice, ""); !slices.Equal(ids(p.Chunk), []string{bRoot, a}) {
			t.Fatalf("threads after redaction: %v", bodies(p.Chunk))
		}
	})
}
