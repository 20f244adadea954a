package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// authEnv is a room of server A for an auth rule case, and the actor whose
// events the case checks: a local user (events through Send, refused with
// 403) or a user of another server (events through IngestEvents, rejected).
type authEnv struct {
	t      *testing.T
	a, r   *homeserver
	room   string
	v      int
	alice  string // the creator
	carol  string // another local user
	actor  string
	remote bool
}

// act performs the actor's event and reports whether it was allowed.
func (env *authEnv) act(s rooms.EventSpec) bool {
	env.t.Helper()
	return env.actAs(env.actor, env.remote, s)
}

// actAs performs an event of user and reports whether it was allowed.
func (env *authEnv) actAs(user string, remote bool, s rooms.EventSpec) bool {
	env.t.Helper()
	s.Sender = user
	if !remote {
		_, err := env.a.e.Send(context.Background(), env.room, s)
		var he *httpx.Error
		switch {
		case err == nil:
			return true
		case errors.As(err, &he) && he.Status == 403 && he.ErrCode == "M_FORBIDDEN":
			return false
		}
		env.t.Fatalf("send: %v", err)
	}
	pdu := env.r.forge(env.a, env.room, s, nil)
	res := env.a.ingest(env.room, []gomatrixserverlib.PDU{pdu})[0]
	switch {
	case res.Stored && res.Status == rooms.StatusAccepted:
		return true
	case res.Stored && res.Status == rooms.StatusRejected:
		if ev := env.a.stored(pdu.EventID()); ev.Pos != 0 {
			env.t.Fatal("a rejected event has a stream position")
		}
		return false
	}
	env.t.Fatalf("ingest: %+v", res)
	return false
}

// must checks that the actor's event is allowed (or not).
func (env *authEnv) must(allowed bool, what string, s rooms.EventSpec) {
	env.t.Helper()
	if got := env.act(s); got != allowed {
		env.t.Fatalf("%s: allowed=%v, want %v", what, got, allowed)
	}
}

// joinActor makes the actor join the room.
func (env *authEnv) joinActor() {
	env.t.Helper()
	if env.remote {
		join(env.t, env.a, env.r, env.room, env.actor)
		return
	}
	env.a.send(env.room, member(env.actor, env.actor, spec.Join))
}

// setLevels has alice set users' power levels.
func (env *authEnv) setLevels(users map[string]int64) {
	env.t.Helper()
	c := env.a.stateContent(env.room, spec.MRoomPowerLevels, "")
	u := c["users"].(map[string]any)
	for k, v := range users {
		u[k] = v
	}
	env.a.send(env.room, state(env.alice, spec.MRoomPowerLevels, "", c))
}

// joinRules has alice set the join rules.
func (env *authEnv) joinRules(content map[string]any) {
	env.t.Helper()
	env.a.send(env.room, state(env.alice, spec.MRoomJoinRules, "", content))
}

// authCase is one auth rule check, run in every room version from min to
// max, once with a local and once with a remote actor.
type authCase struct {
	name     string
	min, max int
	preset   string
	create   func(env *authEnv, req *rooms.CreateRoomRequest)
	run      func(env *authEnv)
}

var authCases = []authCase{
	{name: "power levels: state needs the event's level", run: func(env *authEnv) {
		env.joinActor()
		name := state("", spec.MRoomName, "", map[string]string{"name": "x"})
		env.must(false, "name at level 0", name)
		env.setLevels(map[string]int64{env.actor: 50})
		env.must(true, "name at level 50", name)
	}},
	{name: "power levels: no raising above one's own level, no demoting a higher user", create: plAt50, run: func(env *authEnv) {
		env.joinActor()
		env.setLevels(map[string]int64{env.actor: 50, env.carol: 100})
		env.must(false, "raise self to 100", env.powerLevels(map[string]int64{env.actor: 100}))
		env.must(false, "demote carol (100)", env.powerLevels(map[string]int64{env.carol: 0}))
		env.must(true, "raise dave to 50", env.powerLevels(map[string]int64{"@dave:example.org": 50}))
	}},
	{name: "bans: ban level and target's level", run: func(env *authEnv) {
		env.joinActor()
		env.a.send(env.room, member(env.carol, env.carol, spec.Join))
		env.must(false, "ban at level 0", member("", env.carol, spec.Ban))
		env.setLevels(map[string]int64{env.actor: 50})
		env.must(false, "ban alice (100)", member("", env.alice, spec.Ban))
		env.must(true, "ban carol (0) at level 50", member("", env.carol, spec.Ban))
	}},
	{name: "bans: a banned user can neither send nor join", run: func(env *authEnv) {
		env.joinActor()
		env.a.send(env.room, member(env.alice, env.actor, spec.Ban))
		env.must(false, "message while banned", message("", "hi"))
		env.must(false, "join while banned", member("", env.actor, spec.Join))
	}},
	{name: "join rules: invite only", preset: "private_chat", run: func(env *authEnv) {
		env.must(false, "join uninvited", member("", env.actor, spec.Join))
		env.a.send(env.room, member(env.alice, env.actor, spec.Invite))
		env.must(true, "join invited", member("", env.actor, spec.Join))
	}},
	{name: "join rules: knock", min: 7, preset: "private_chat", run: func(env *authEnv) {
		env.must(false, "knock on an invite-only room", member("", env.actor, spec.Knock))
		env.joinRules(map[string]any{"join_rule": "knock"})
		env.must(false, "join a knock room uninvited", member("", env.actor, spec.Join))
		env.must(true, "knock", member("", env.actor, spec.Knock))
	}},
	{name: "join rules: no knocking before v7", max: 6, preset: "private_chat", run: func(env *authEnv) {
		env.joinRules(map[string]any{"join_rule": "knock"})
		env.must(false, "knock", member("", env.actor, spec.Knock))
	}},
	{name: "join rules: restricted", min: 8, preset: "private_chat", run: func(env *authEnv) {
		env.joinRules(restricted(env))
		env.must(false, "join without an authorising user", member("", env.actor, spec.Join))
		env.must(false, "join authorised by a user who is not joined", restrictedJoin(env, env.carol))
		env.must(true, "join authorised by alice", restrictedJoin(env, env.alice))
	}},
	{name: "join rules: no restricted joins before v8", max: 7, preset: "private_chat", run: func(env *authEnv) {
		env.joinRules(restricted(env))
		env.must(false, "join authorised by alice", restrictedJoin(env, env.alice))
	}},
	{name: "creators: additional creators cannot be demoted or banned", min: 12, create: func(env *authEnv, req *rooms.CreateRoomRequest) {
		req.CreationContent = map[string]json.RawMessage{"additional_creators": mustJSON([]string{env.carol})}
	}, run: func(env *authEnv) {
		env.joinActor()
		env.a.send(env.room, member(env.carol, env.carol, spec.Join))
		env.setLevels(map[string]int64{env.actor: 100})
		env.must(false, "ban the creator", member("", env.alice, spec.Ban))
		env.must(false, "ban an additional creator", member("", env.carol, spec.Ban))
		env.must(false, "kick an additional creator", member("", env.carol, spec.Leave))
		env.must(false, "list an additional creator in users", env.powerLevels(map[string]int64{env.carol: 0}))
		env.must(false, "list the creator in users", env.powerLevels(map[string]int64{env.alice: 0}))
		if !env.actAs(env.carol, false, member("", env.actor, spec.Ban)) {
			env.t.Fatal("an additional creator may ban a user of level 100")
		}
	}},
}

// plAt50 lets users of level 50 change power levels.
func plAt50(_ *authEnv, req *rooms.CreateRoomRequest) {
	req.PowerLevelContentOverride = map[string]json.RawMessage{"events": mustJSON(map[string]int64{spec.MRoomPowerLevels: 50})}
}

// powerLevels is a power levels event with the given users' levels changed.
func (env *authEnv) powerLevels(users map[string]int64) rooms.EventSpec {
	env.t.Helper()
	c := env.a.stateContent(env.room, spec.MRoomPowerLevels, "")
	u := c["users"].(map[string]any)
	for k, v := range users {
		u[k] = v
	}
	return state("", spec.MRoomPowerLevels, "", c)
}

func restricted(env *authEnv) map[string]any {
	return map[string]any{"join_rule": "restricted", "allow": []map[string]string{{"type": "m.room_membership", "room_id": "!other:" + env.a.name}}}
}

func restrictedJoin(env *authEnv, via string) rooms.EventSpec {
	return state("", spec.MRoomMember, env.actor, map[string]any{"membership": spec.Join, "join_authorised_via_users_server": via})
}

// TestAuthRules runs the auth rule cases in every room version they apply
// to, for local events (Send refuses them with 403 M_FORBIDDEN) and events
// of another server's users (IngestEvents rejects them).
func TestAuthRules(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		a := startHomeserver(t, b)
		r := signingOnly(t, "remote.example.org")
		alice, carol, bob := a.user("alice"), a.user("carol"), a.user("bob")
		n := 0
		for _, c := range authCases {
			for v := max(c.min, 1); v <= 12 && (c.max == 0 || v <= c.max); v++ {
				for _, remote := range []bool{false, true} {
					where := "local"
					if remote {
						where = "remote"
					}
					t.Run(fmt.Sprintf("%s/v%d/%s", c.name, v, where), func(t *testing.T) {
						n++
						env := &authEnv{t: t, a: a.with(t), r: r.with(t), v: v, alice: alice, carol: carol, actor: bob, remote: remote}
						if remote {
							env.actor = fmt.Sprintf("@rob%d:%s", n, r.name)
						}
						preset := c.preset
						if preset == "" {
							preset = "public_chat"
						}
						env.room = a.createRoom(alice, v, preset, func(req *rooms.CreateRoomRequest) {
							if c.create != nil {
								c.create(env, req)
							}
						})
						c.run(env)
					})
				}
			}
		}
	})
}

// TestIngestRejectedByStateBefore: an event whose auth events allow it but
// the state before it does not (it cites power levels that were replaced)
// is rejected, stored without a stream position and left out of the state;
// later events that build on it are judged on their own.
func TestIngestRejectedByStateBefore(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		a := startHomeserver(t, b)
		r := signingOnly(t, "remote.example.org")
		alice := a.user("alice")
		rob := "@rob:" + r.name
		roomID := a.createRoom(alice, 10, "public_chat", nil)
		join(t, a, r, roomID, rob)
		env := &authEnv{t: t, a: a, r: r, room: roomID, alice: alice, actor: rob, remote: true}
		env.setLevels(map[string]int64{rob: 50})
		oldPL := a.currentState(roomID)[rooms.StateKey{Type: spec.MRoomPowerLevels}]
		env.setLevels(map[string]int64{rob: 0})

		// Rob's server cites the power levels that gave him 50.
		forged := r.forge(a, roomID, state(rob, spec.MRoomName, "", map[string]string{"name": "forged"}), func(pe *gomatrixserverlib.ProtoEvent) {
			auth := pe.AuthEvents.([]string)
			for i, id := range auth {
				if a.stored(id).Type() == spec.MRoomPowerLevels {
					auth[i] = oldPL
				}
			}
		})
		res := a.ingest(roomID, []gomatrixserverlib.PDU{forged})
		mustStatus(t, res, rooms.StatusRejected)
		if a.stateContent(roomID, spec.MRoomName, "") != nil {
			t.Fatal("a rejected event changed the state")
		}
		// Known and rejected: ingesting it again says so, with the reason.
		res = a.ingest(roomID, []gomatrixserverlib.PDU{forged})
		if !res[0].Known || res[0].Status != rooms.StatusRejected || res[0].Err == nil {
			t.Fatalf("rejected event ingested again: %+v", res[0])
		}
		// An event citing the rejected one as its prev event is judged by
		// the state before the rejected event.
		next := r.forge(a, roomID, message(rob, "after"), func(pe *gomatrixserverlib.ProtoEvent) {
			pe.PrevEvents = []string{forged.EventID()}
		})
		mustStatus(t, a.ingest(roomID, []gomatrixserverlib.PDU{next}), rooms.StatusAccepted)
		// An event citing a rejected event among its auth events is rejected.
		bad := r.forge(a, roomID, message(rob, "bad"), func(pe *gomatrixserverlib.ProtoEvent) {
			pe.AuthEvents = append(pe.AuthEvents.([]string), forged.EventID())
		})
		mustStatus(t, a.ingest(roomID, []gomatrixserverlib.PDU{bad}), rooms.StatusRejected)
		// So is one with an auth event the rules do not ask for.
		extra := r.forge(a, roomID, message(rob, "extra"), func(pe *gomatrixserverlib.ProtoEvent) {
			jr := a.currentState(roomID)[rooms.StateKey{Type: spec.MRoomJoinRules}]
			pe.AuthEvents = append(pe.AuthEvents.([]string), jr)
		})
		mustStatus(t, a.ingest(roomID, []gomatrixserverlib.PDU{extra}), rooms.StatusRejected)
	})
}
