package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// fedRoom is a public room of server A (created by alice) that bob, a user
// of server B, has joined; carol is a second user of A, joined too.
type fedRoom struct {
	t                 testing.TB
	a, b              *homeserver
	id                string
	alice, bob, carol string
	ver               gomatrixserverlib.RoomVersion
}

// newFedRoom sets up a fedRoom of the given version; levels are extra
// power levels of users (alice, the creator, keeps 100 or, in v12, her
// creator's power).
func newFedRoom(t testing.TB, b testutil.Backend, version int, levels func(r *fedRoom) map[string]int64, events map[string]int64) *fedRoom {
	t.Helper()
	r := &fedRoom{t: t, a: startHomeserver(t, b), b: startHomeserver(t, b)}
	r.alice, r.carol, r.bob = r.a.user("alice"), r.a.user("carol"), r.b.user("bob")
	r.id = r.a.createRoom(r.alice, version, "public_chat", func(req *rooms.CreateRoomRequest) {
		users := map[string]int64{}
		if version < 12 {
			users[r.alice] = 100
		}
		if levels != nil {
			for u, l := range levels(r) {
				users[u] = l
			}
		}
		override := map[string]json.RawMessage{"users": mustJSON(users)}
		if events != nil {
			override["events"] = mustJSON(events)
		}
		req.PowerLevelContentOverride = override
	})
	r.ver = r.a.version(r.id)
	r.a.send(r.id, member(r.carol, r.carol, spec.Join))
	join(t, r.a, r.b, r.id, r.bob)
	return r
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// powerLevels builds a power levels event content from the current one on
// h with the given users' levels changed (level < 0 removes the entry).
func (r *fedRoom) powerLevels(h *homeserver, users map[string]int64) map[string]any {
	r.t.Helper()
	c := h.stateContent(r.id, spec.MRoomPowerLevels, "")
	u, _ := c["users"].(map[string]any)
	if u == nil {
		u = map[string]any{}
	}
	for user, l := range users {
		if l < 0 {
			delete(u, user)
		} else {
			u[user] = l
		}
	}
	c["users"] = u
	return c
}

// userLevel returns a user's level in the current power levels on h.
func (r *fedRoom) userLevel(h *homeserver, user string) int64 {
	r.t.Helper()
	l, err := h.e.UserPowerLevel(context.Background(), r.id, user)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// later reports whether a is applied after b by the tie-breaks of state
// resolution v2 among events of equal rank: origin_server_ts, then event ID.
func later(a, b *rooms.Event) bool {
	if a.OriginServerTS() != b.OriginServerTS() {
		return a.OriginServerTS() > b.OriginServerTS()
	}
	return a.EventID() > b.EventID()
}

// checkMerge has A send an event building on both branches and B receive
// it: the state before it is the resolution of the branches on both
// servers, and equals the current state.
func (r *fedRoom) checkMerge(tips ...*rooms.Event) {
	r.t.Helper()
	ctx := context.Background()
	merge := r.a.send(r.id, message(r.alice, "merge"))[0]
	var ids []string
	for _, tip := range tips {
		ids = append(ids, tip.EventID())
	}
	slices.Sort(ids)
	prevs := slices.Sorted(slices.Values(merge.PrevEventIDs()))
	if !slices.Equal(prevs, ids) {
		r.t.Fatalf("merge event builds on %v, want %v", prevs, ids)
	}
	mustStatus(r.t, r.b.deliver(r.a, r.id, merge), rooms.StatusAccepted)
	for _, h := range []*homeserver{r.a, r.b} {
		before, err := h.e.StateAt(ctx, h.stored(merge.EventID()), false)
		if err != nil {
			r.t.Fatal(err)
		}
		resolved, err := h.e.StateAfterEvents(ctx, r.id, ids)
		if err != nil {
			r.t.Fatal(err)
		}
		if !maps(h.byEventID(r.id, before), h.byEventID(r.id, resolved)) || !maps(h.byEventID(r.id, before), h.currentState(r.id)) {
			r.t.Fatalf("%s: state before the merge event differs from the resolution of its prev events or the current state", h.name)
		}
	}
	sameState(r.t, r.id, r.a, r.b)
}

func maps(a, b map[rooms.StateKey]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// crossCheck compares the engine's resolution of the states after tips
// with gomatrixserverlib's state resolution v2 (room versions 2–11, where
// the library's implementation works).
func (r *fedRoom) crossCheck(h *homeserver, tips ...*rooms.Event) {
	r.t.Helper()
	if r.ver == gomatrixserverlib.RoomVersionV1 || gomatrixserverlib.MustGetRoomVersion(r.ver).StateResAlgorithm() != gomatrixserverlib.StateResV2 {
		return
	}
	ctx := context.Background()
	var sets [][]gomatrixserverlib.PDU
	var ids []string
	for _, tip := range tips {
		m, err := h.e.StateAt(ctx, h.stored(tip.EventID()), true)
		if err != nil {
			r.t.Fatal(err)
		}
		evs, err := h.e.StateEvents(ctx, r.ver, m)
		if err != nil {
			r.t.Fatal(err)
		}
		set := make([]gomatrixserverlib.PDU, len(evs))
		for i, ev := range evs {
			set[i] = ev.PDU
			ids = append(ids, ev.EventID())
		}
		sets = append(sets, set)
	}
	chain, err := h.e.AuthChain(ctx, r.id, ids)
	if err != nil {
		r.t.Fatal(err)
	}
	var auth []gomatrixserverlib.PDU
	for _, ev := range chain {
		auth = append(auth, ev.PDU)
	}
	for _, set := range sets {
		auth = append(auth, set...)
	}
	lib, err := gomatrixserverlib.ResolveConflictsNew(r.ver, sets, auth, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
		return spec.NewUserID(string(s), true)
	}, func(string) bool { return false })
	if err != nil {
		r.t.Fatal(err)
	}
	want := map[rooms.StateKey]string{}
	for _, p := range lib {
		want[rooms.StateKey{Type: p.Type(), StateKey: *p.StateKey()}] = p.EventID()
	}
	var tipIDs []string
	for _, tip := range tips {
		tipIDs = append(tipIDs, tip.EventID())
	}
	got, err := h.e.StateAfterEvents(ctx, r.id, tipIDs)
	if err != nil {
		r.t.Fatal(err)
	}
	if g := h.byEventID(r.id, got); !maps(g, want) {
		r.t.Fatalf("%s: resolution differs from gomatrixserverlib's:\n got %v\nwant %v", h.name, g, want)
	}
}

// TestForkConcurrentRoomNames: both servers rename the room at the same
// time, then exchange the events. Both end with the same name — the one
// state resolution orders last — and an event building on both branches
// sees that state.
func TestForkConcurrentRoomNames(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		for v := 1; v <= 12; v++ {
			t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
				r := newFedRoom(t, b, v, func(r *fedRoom) map[string]int64 { return map[string]int64{r.bob: 50} }, nil)
				nameA := r.a.send(r.id, state(r.alice, spec.MRoomName, "", map[string]string{"name": "A"}))[0]
				nameB := r.b.send(r.id, state(r.bob, spec.MRoomName, "", map[string]string{"name": "B"}))[0]
				mustStatus(t, r.a.deliver(r.b, r.id, nameB), rooms.StatusAccepted)
				mustStatus(t, r.b.deliver(r.a, r.id, nameA), rooms.StatusAccepted)
				sameState(t, r.id, r.a, r.b)
				got := r.a.stateContent(r.id, spec.MRoomName, "")["name"]
				if v >= 2 {
					// Same mainline position: the later event is applied last.
					want := "A"
					if later(nameB, nameA) {
						want = "B"
					}
					if got != want {
						t.Fatalf("name %v, want %s", got, want)
					}
				} else if got != "A" && got != "B" {
					t.Fatalf("name %v", got)
				}
				r.crossCheck(r.a, nameA, nameB)
				r.checkMerge(nameA, nameB)
			})
		}
	})
}

// TestForkPowerLevelRace covers two admins changing power levels at the
// same time on different servers. Demoting an equal is not allowed, so the
// classic "Carol demotes Bob while Bob changes the room's power levels"
// case is: Carol (100) removes Bob's power (50) while Bob, still allowed
// where he is, changes an event level. Resolution applies the power events
// in reverse topological power order — Carol's first, she has more power
// — and Bob's change then fails: on both servers Bob ends demoted and his
// change is lost. Between two admins of equal power the earlier change is
// applied first and the later one, still allowed, wins.
func TestForkPowerLevelRace(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		for _, v := range []int{1, 2, 6, 10, 11, 12} {
			t.Run(fmt.Sprintf("v%d/demotion", v), func(t *testing.T) {
				r := newFedRoom(t, b, v, func(r *fedRoom) map[string]int64 {
					return map[string]int64{r.bob: 50, r.carol: 100}
				}, map[string]int64{spec.MRoomPowerLevels: 50, spec.MRoomName: 50})
				demote := r.a.send(r.id, state(r.carol, spec.MRoomPowerLevels, "", r.powerLevels(r.a, map[string]int64{r.bob: 0})))[0]
				pl := r.powerLevels(r.b, nil)
				pl["events"].(map[string]any)[spec.MRoomName] = 0
				change := r.b.send(r.id, state(r.bob, spec.MRoomPowerLevels, "", pl))[0]
				// A has demoted Bob already: his change fails against A's
				// current state and is soft-failed.
				mustStatus(t, r.a.deliver(r.b, r.id, change), rooms.StatusSoftFailed)
				mustStatus(t, r.b.deliver(r.a, r.id, demote), rooms.StatusAccepted)
				sameState(t, r.id, r.a, r.b)
				for _, h := range []*homeserver{r.a, r.b} {
					if id := h.currentState(r.id)[rooms.StateKey{Type: spec.MRoomPowerLevels}]; id != demote.EventID() {
						t.Fatalf("%s: power levels %s, want Carol's demotion %s", h.name, id, demote.EventID())
					}
				}
				r.crossCheck(r.b, demote, change)
			})
			t.Run(fmt.Sprintf("v%d/equals", v), func(t *testing.T) {
				r := newFedRoom(t, b, v, func(r *fedRoom) map[string]int64 {
					return map[string]int64{r.bob: 100, r.carol: 100}
				}, nil)
				plA := r.powerLevels(r.a, nil)
				plA["events"].(map[string]any)[spec.MRoomTopic] = 100
				onA := r.a.send(r.id, state(r.carol, spec.MRoomPowerLevels, "", plA))[0]
				plB := r.powerLevels(r.b, nil)
				plB["events"].(map[string]any)[spec.MRoomName] = 0
				onB := r.b.send(r.id, state(r.bob, spec.MRoomPowerLevels, "", plB))[0]
				mustStatus(t, r.a.deliver(r.b, r.id, onB), rooms.StatusAccepted)
				mustStatus(t, r.b.deliver(r.a, r.id, onA), rooms.StatusAccepted)
				sameState(t, r.id, r.a, r.b)
				if v >= 2 {
					want := onA
					if later(onB, onA) {
						want = onB
					}
					if id := r.a.currentState(r.id)[rooms.StateKey{Type: spec.MRoomPowerLevels}]; id != want.EventID() {
						t.Fatalf("power levels %s, want the later change %s", id, want.EventID())
					}
				}
				r.crossCheck(r.a, onA, onB)
				r.checkMerge(onA, onB)
			})
		}
	})
}

// TestForkBanRacesPowerLevels: a moderator on B (allowed to change power
// levels) promotes a user while an admin on A bans the moderator. A
// receives the promotion after the ban: it was allowed where it was made
// but not by A's current state, so A soft-fails it. B receives the ban and
// resolves its fork: the ban (sender with more power) is applied first and
// the promotion then fails. Both servers end with the ban and without the
// promotion; an event of B building on both branches is accepted by A.
func TestForkBanRacesPowerLevels(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		for _, v := range []int{1, 2, 6, 10, 11, 12} {
			t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
				r := newFedRoom(t, b, v, func(r *fedRoom) map[string]int64 {
					return map[string]int64{r.bob: 50}
				}, map[string]int64{spec.MRoomPowerLevels: 50})
				dave := r.b.user("dave")
				mustStatus(t, r.a.deliver(r.b, r.id, r.b.send(r.id, member(dave, dave, spec.Join))...), rooms.StatusAccepted)
				ban := r.a.send(r.id, member(r.alice, r.bob, spec.Ban))[0]
				promote := r.b.send(r.id, state(r.bob, spec.MRoomPowerLevels, "", r.powerLevels(r.b, map[string]int64{r.carol: 50})))[0]
				msg := r.b.send(r.id, message(r.bob, "still here"))[0]
				res := r.a.deliver(r.b, r.id, promote, msg)
				mustStatus(t, res, rooms.StatusSoftFailed)
				for _, id := range []string{promote.EventID(), msg.EventID()} {
					if ev := r.a.stored(id); ev.Pos != 0 || ev.Status != rooms.StatusSoftFailed {
						t.Fatalf("soft-failed event: pos %d status %d", ev.Pos, ev.Status)
					}
				}
				if l := r.userLevel(r.a, r.carol); l != 0 {
					t.Fatalf("a soft-failed event changed the state: carol's level %d", l)
				}
				mustStatus(t, r.b.deliver(r.a, r.id, ban), rooms.StatusAccepted)
				sameState(t, r.id, r.a, r.b)
				for _, h := range []*homeserver{r.a, r.b} {
					if m := h.stateContent(r.id, spec.MRoomMember, r.bob)["membership"]; m != spec.Ban {
						t.Fatalf("%s: bob's membership %v", h.name, m)
					}
					if l := r.userLevel(h, r.carol); l != 0 {
						t.Fatalf("%s: carol's level %d, the banned moderator's promotion won", h.name, l)
					}
				}
				r.crossCheck(r.b, ban, msg)
				// Alice's next event does not build on the soft-failed event.
				next := r.a.send(r.id, message(r.alice, "after"))[0]
				if slices.Contains(next.PrevEventIDs(), promote.EventID()) || slices.Contains(next.PrevEventIDs(), msg.EventID()) {
					t.Fatal("a soft-failed event became a prev event")
				}
				// Dave, on B, builds on both branches; A accepts his event and the
				// state before it has the ban and not the promotion.
				d := r.b.send(r.id, message(dave, "both"))[0]
				if len(d.PrevEventIDs()) != 2 {
					t.Fatalf("dave's event builds on %v", d.PrevEventIDs())
				}
				mustStatus(t, r.a.deliver(r.b, r.id, d), rooms.StatusAccepted)
				before, err := r.a.e.StateAt(context.Background(), r.a.stored(d.EventID()), false)
				if err != nil {
					t.Fatal(err)
				}
				st := r.a.byEventID(r.id, before)
				if st[rooms.StateKey{Type: spec.MRoomMember, StateKey: r.bob}] != ban.EventID() ||
					st[rooms.StateKey{Type: spec.MRoomPowerLevels}] == promote.EventID() {
					t.Fatal("state before dave's event: want the ban and not the promotion")
				}
				sameState(t, r.id, r.a, r.b)
			})
		}
	})
}

// TestForkRandomized lets two servers change a room concurrently for
// several rounds — messages, names and topics, power level changes, kicks,
// bans, unbans and rejoins by users of both servers — and exchange their
// events after each round. Every event must be accepted or soft-failed on
// the other server, never rejected (both compute the same state before
// it). Soft failure may leave the servers with different forward
// extremities, hence different current states, but resolution is
// deterministic: the state after all their extremities is the same on
// both, and equal extremities mean equal current states.
//
// (gomatrixserverlib is no oracle here: its v2 pulls into the power
// ordering only the auth events of power events that are themselves
// conflicted, not those of the auth difference, and orders the other
// events by an extra "steps" key; the spec and Synapse do neither.)
func TestForkRandomized(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		for _, run := range []struct{ v, seed int }{{1, 1}, {2, 1}, {10, 1}, {10, 2}, {10, 3}, {12, 1}, {12, 2}, {12, 3}} {
			v := run.v
			t.Run(fmt.Sprintf("v%d/seed%d", v, run.seed), func(t *testing.T) {
				ctx := context.Background()
				rng := rand.New(rand.NewPCG(uint64(v), uint64(run.seed)))
				r := newFedRoom(t, b, v, func(r *fedRoom) map[string]int64 {
					return map[string]int64{r.bob: 100, r.carol: 50}
				}, nil)
				dave, erin := "@dave:"+r.a.name, "@erin:"+r.b.name
				mustStatus(t, r.b.deliver(r.a, r.id, r.a.send(r.id, member(dave, dave, spec.Join))...), rooms.StatusAccepted)
				mustStatus(t, r.a.deliver(r.b, r.id, r.b.send(r.id, member(erin, erin, spec.Join))...), rooms.StatusAccepted)
				sides := []struct {
					h     *homeserver
					users []string
				}{{r.a, []string{r.alice, r.carol, dave}}, {r.b, []string{r.bob, erin}}}
				everyone := []string{r.alice, r.carol, dave, r.bob, erin}
				events, softFailed := 0, 0
				for round := range 15 {
					produced := make([][]*rooms.Event, 2)
					for i, side := range sides {
						for range 6 {
							s := randomChange(rng, r, side.users[rng.IntN(len(side.users))], everyone)
							if evs, err := side.h.e.Send(ctx, r.id, s); err == nil {
								produced[i] = append(produced[i], evs...)
							}
						}
					}
					for i, side := range sides {
						if len(produced[i]) == 0 {
							continue
						}
						for _, res := range sides[1-i].h.deliver(side.h, r.id, produced[i]...) {
							events++
							switch {
							case res.Stored && res.Status == rooms.StatusSoftFailed:
								softFailed++
							case !res.Stored || res.Status != rooms.StatusAccepted:
								t.Fatalf("round %d: event %s from %s: %+v", round, res.EventID, side.h.name, res)
							}
						}
					}
					extA, err := r.a.e.ForwardExtremities(ctx, r.id)
					if err != nil {
						t.Fatal(err)
					}
					extB, err := r.b.e.ForwardExtremities(ctx, r.id)
					if err != nil {
						t.Fatal(err)
					}
					all := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(extA), extB...))))
					var states []map[rooms.StateKey]string
					for _, h := range []*homeserver{r.a, r.b} {
						m, err := h.e.StateAfterEvents(ctx, r.id, all)
						if err != nil {
							t.Fatal(err)
						}
						states = append(states, h.byEventID(r.id, m))
					}
					if !maps(states[0], states[1]) {
						t.Fatalf("round %d: the servers resolve the same extremities differently", round)
					}
					if sameSet(extA, extB) {
						sameState(t, r.id, r.a, r.b)
					}
				}
				if events < 30 {
					t.Fatalf("only %d events exchanged", events)
				}
				t.Logf("%d events exchanged, %d soft-failed", events, softFailed)
			})
		}
	})
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// randomChange is a random room change by sender; the engine refuses those
// the auth rules do not allow.
func randomChange(rng *rand.Rand, r *fedRoom, sender string, everyone []string) rooms.EventSpec {
	target := everyone[rng.IntN(len(everyone))]
	switch rng.IntN(8) {
	case 0:
		return state(sender, spec.MRoomName, "", map[string]string{"name": fmt.Sprint("name ", rng.IntN(1000))})
	case 1:
		return state(sender, spec.MRoomTopic, "", map[string]string{"topic": fmt.Sprint("topic ", rng.IntN(1000))})
	case 2:
		levels := []int64{0, 50, 100}
		h := r.a
		if strings.HasSuffix(sender, ":"+r.b.name) {
			h = r.b
		}
		return state(sender, spec.MRoomPowerLevels, "", r.powerLevels(h, map[string]int64{target: levels[rng.IntN(len(levels))]}))
	case 3:
		return member(sender, target, spec.Leave)
	case 4:
		return member(sender, target, spec.Ban)
	case 5:
		return member(sender, sender, spec.Join)
	default:
		return message(sender, "hello")
	}
}
