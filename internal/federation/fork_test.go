package federation_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// TestThreeServerFork forks a room's history: while hs2 cannot be reached,
// hs1 and hs3 change the topic and the name, and hs2 changes the topic on
// its own branch. Once hs2 is reachable again, the branches meet (missing
// events are fetched) and the three servers end with the same state.
func TestThreeServerFork(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n, srv := startServers(t, b, "hs1", "hs2", "hs3")
		hs1, hs2, hs3 := srv[0], srv[1], srv[2]
		alice, bob, carol := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw"), hs3.NewUser(t, "carol", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat",
			// The creator is not listed: v12 creators have unlimited power.
			"power_level_content_override": map[string]any{"users": map[string]int{bob.UserID: 100, carol.UserID: 100}}})
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		joinOver(t, hs1, hs3, roomID, carol.UserID)
		// Everyone talks once (so that each server has the others' keys:
		// there is no notary to ask during the partition).
		for _, c := range []*testutil.Client{alice, bob, carol} {
			id := say(t, c, roomID, "start from "+c.UserID)
			for _, other := range []*testutil.Client{alice, bob, carol} {
				waitEvent(t, other, roomID, id)
			}
		}

		// hs2 goes away; hs1 and hs3 go on.
		n.Stop(t, hs2)
		topicA := setState(t, alice, roomID, "m.room.topic", "", map[string]any{"topic": "alice's topic"})
		waitEvent(t, carol, roomID, topicA)
		nameC := setState(t, carol, roomID, "m.room.name", "", map[string]any{"name": "carol's name"})
		waitEvent(t, alice, roomID, nameC)

		// hs2 comes back unreachable: it sends, but hears nothing. Bob's
		// topic builds on what it had before: a fork.
		hs2 = n.RestartIsolated(t, hs2)
		topicB := setState(t, bob, roomID, "m.room.topic", "", map[string]any{"topic": "bob's topic"})
		waitEvent(t, alice, roomID, topicB)
		waitEvent(t, carol, roomID, topicB)
		if prev := stored(t, hs1, topicB).PrevEventIDs(); slices.Contains(prev, topicA) || slices.Contains(prev, nameC) {
			t.Fatalf("bob's topic saw the other branch: prev_events %v", prev)
		}

		// The partition ends; everyone talks, so that the branches merge.
		hs2 = n.Restart(t, hs2)
		var last []string
		for _, c := range []*testutil.Client{bob, alice, carol} {
			last = append(last, say(t, c, roomID, "after the fork from "+c.UserID))
		}
		for _, c := range []*testutil.Client{alice, bob, carol} {
			for _, id := range append(last, topicA, nameC, topicB) {
				waitEvent(t, c, roomID, id)
			}
		}
		s1 := currentState(t, hs1, roomID)
		var states []string
		waitUntil(t, "the same state on the three servers", func() bool {
			states = []string{fmt.Sprint(s1), fmt.Sprint(currentState(t, hs2, roomID)), fmt.Sprint(currentState(t, hs3, roomID))}
			s1 = currentState(t, hs1, roomID)
			return states[0] == states[1] && states[1] == states[2] && states[0] == fmt.Sprint(s1)
		})
		topic := stateOn(t, hs1, roomID, "m.room.topic", "")["topic"]
		name := stateOn(t, hs1, roomID, "m.room.name", "")["name"]
		for _, s := range []*testutil.Server{hs2, hs3} {
			if got := stateOn(t, s, roomID, "m.room.topic", "")["topic"]; got != topic {
				t.Errorf("topic on %s: %v, on hs1: %v", s.Config.ServerName, got, topic)
			}
		}
		if name != "carol's name" {
			t.Errorf("room name %v", name)
		}
	})
}
