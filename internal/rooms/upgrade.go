package rooms

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Event types of room upgrades.
const (
	mRoomTombstone = "m.room.tombstone"
	mSpaceChild    = "m.space.child"
)

// upgradeCopiedState are the state events (empty state key) an upgrade
// copies to the new room: the spec's recommended list, less the power
// levels, which are adapted rather than copied.
var upgradeCopiedState = []string{
	spec.MRoomJoinRules, spec.MRoomName, spec.MRoomTopic, spec.MRoomHistoryVisibility,
	spec.MRoomGuestAccess, spec.MRoomAvatar, spec.MRoomEncryption, mRoomServerACL,
}

func (e *Engine) handleUpgrade(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		NewVersion         *string  `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.NewVersion == nil {
		return nil, httpx.MissingParam("new_version is required")
	}
	newRoomID, err := e.UpgradeRoom(r.Context(), p.UserID, roomID, *body.NewVersion, body.AdditionalCreators)
	if err != nil {
		return nil, err
	}
	return map[string]string{"replacement_room": newRoomID}, nil
}

// stableRoomVersion returns a room version this server creates rooms in,
// or 400 M_UNSUPPORTED_ROOM_VERSION.
func stableRoomVersion(v string) (gomatrixserverlib.IRoomVersion, error) {
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v))
	if err != nil || !gomatrixserverlib.StableRoomVersion(impl.Version()) {
		return nil, httpx.NewError(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %q is not supported", v)
	}
	return impl, nil
}

// upgradePlan is what an upgrade sends: the new room's events, and the
// follow-up state of the old room (nil when unchanged).
type upgradePlan struct {
	specs          []EventSpec
	oldAlias       map[string]any
	oldPowerLevels json.RawMessage
}

// UpgradeRoom replaces a room by a new room of another version, following
// the spec's server behaviour for room upgrades and Synapse where the spec
// leaves a choice: the new room's create event names its predecessor;
// join rules, name, topic, history visibility, guest access, avatar,
// encryption, server ACL, power levels, bans, space children and the
// local part of the canonical alias are carried over; local aliases and
// the directory listing move; the old room gets a tombstone and its
// events_default and invite levels are raised so that ordinary members
// can no longer talk or invite. It returns the new room's ID.
//
// additionalCreators become the new room's additional creators when its
// version privileges creators (v12) and are ignored otherwise.
func (e *Engine) UpgradeRoom(ctx context.Context, userID, oldRoomID, version string, additionalCreators []string) (string, error) {
	verImpl, err := stableRoomVersion(version)
	if err != nil {
		return "", err
	}
	var creators []string
	for _, u := range additionalCreators {
		if err := validUserID(u); err != nil {
			return "", err
		}
		if u != userID && !slices.Contains(creators, u) {
			creators = append(creators, u)
		}
	}
	if !verImpl.PrivilegedCreators() {
		creators = nil
	}
	old, err := e.room(ctx, oldRoomID)
	if err != nil {
		return "", err
	}
	if err := e.checkCanUpgrade(ctx, old, userID); err != nil {
		return "", err
	}
	plan, err := e.planUpgrade(ctx, old, userID, verImpl, creators)
	if err != nil {
		return "", err
	}
	newRoomID, err := e.createFromSpecs(ctx, verImpl, plan.specs)
	if err != nil {
		return "", err
	}
	if _, err := e.Send(ctx, oldRoomID, stateSpec(userID, mRoomTombstone, "", map[string]string{
		"body": "This room has been replaced", "replacement_room": newRoomID,
	})); err != nil {
		return "", err
	}
	if _, err := e.db.Exec(ctx, `UPDATE room_aliases SET room_id = $1 WHERE room_id = $2`, newRoomID, oldRoomID); err != nil {
		return "", err
	}
	// The old room's follow-ups are best effort, as in Synapse: the new room
	// exists and the client must learn its ID.
	if plan.oldAlias != nil {
		e.sendFollowUp(ctx, oldRoomID, stateSpec(userID, spec.MRoomCanonicalAlias, "", plan.oldAlias))
	}
	if published, err := e.Published(ctx, oldRoomID); err != nil {
		return "", err
	} else if published {
		if err := e.SetPublished(ctx, newRoomID, true); err != nil {
			return "", err
		}
		if err := e.SetPublished(ctx, oldRoomID, false); err != nil {
			return "", err
		}
	}
	if plan.oldPowerLevels != nil {
		e.sendFollowUp(ctx, oldRoomID, stateSpec(userID, spec.MRoomPowerLevels, "", plan.oldPowerLevels))
	}
	return newRoomID, nil
}

// sendFollowUp sends an event whose failure must not fail the request.
func (e *Engine) sendFollowUp(ctx context.Context, roomID string, s EventSpec) {
	if _, err := e.Send(ctx, roomID, s); err != nil {
		slog.Warn("room upgrade: cannot update the old room", "room", roomID, "type", s.Type, "err", err)
	}
}

// checkCanUpgrade requires the user to be joined and to have the power to
// send m.room.tombstone.
func (e *Engine) checkCanUpgrade(ctx context.Context, ri *roomInfo, userID string) error {
	mem, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomMember, userID)
	if err != nil {
		return err
	}
	if mem == nil {
		return httpx.Forbidden("You are not in this room")
	}
	if m, _ := mem.Membership(); m != spec.Join {
		return httpx.Forbidden("You are not in this room")
	}
	p, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return err
	}
	if p.UserLevel(userID) < p.levels.EventLevel(mRoomTombstone, true) {
		return httpx.Forbidden("You do not have the power to upgrade this room")
	}
	return nil
}

// createFromSpecs creates a room of the given version from its initial
// events (the first being m.room.create) and returns its ID.
func (e *Engine) createFromSpecs(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, specs []EventSpec) (string, error) {
	ri := &roomInfo{version: verImpl.Version(), verImpl: verImpl, state: StateMap{}}
	if !verImpl.DomainlessRoomIDs() {
		ri.id = "!" + randomString(18) + ":" + string(e.serverName)
		defer e.lockRoom(ri.id)()
	}
	evs, err := e.sendLocked(ctx, ri, specs, true)
	if err != nil {
		return "", err
	}
	return evs[0].RoomID().String(), nil
}

// planUpgrade builds the events of the replacement room from the old
// room's current state, and the old room's follow-up state.
func (e *Engine) planUpgrade(ctx context.Context, old *roomInfo, userID string, verImpl gomatrixserverlib.IRoomVersion, creators []string) (*upgradePlan, error) {
	get := func(typ string) (*Event, error) { return e.stateEvent(ctx, old, old.state, typ, "") }
	plan := &upgradePlan{}

	// m.room.create
	create, err := get(spec.MRoomCreate)
	if err != nil {
		return nil, err
	}
	var oldCreate map[string]json.RawMessage
	if create != nil {
		_ = json.Unmarshal(create.Content(), &oldCreate)
	}
	predecessor := map[string]string{"room_id": old.id}
	// Room versions with domainless room IDs (v12) drop predecessor.event_id.
	if n := len(old.extremities); n > 0 && !verImpl.DomainlessRoomIDs() {
		predecessor["event_id"] = old.extremities[n-1] // the last event before the upgrade
	}
	content := map[string]any{"room_version": string(verImpl.Version()), "predecessor": predecessor}
	var roomType string
	if t, ok := oldCreate["type"]; ok {
		content["type"] = t
		_ = json.Unmarshal(t, &roomType)
	}
	var federate bool
	if f, ok := oldCreate["m.federate"]; ok && json.Unmarshal(f, &federate) == nil && !federate {
		content["m.federate"] = false
	}
	if verImpl.CreatorInCreateEvent() {
		content["creator"] = userID
	}
	if len(creators) > 0 {
		content["additional_creators"] = creators
	}
	empty := ""
	plan.specs = append(plan.specs, EventSpec{Sender: userID, Type: spec.MRoomCreate, StateKey: &empty, Content: content})
	member, err := e.memberContent(ctx, userID, spec.Join, "", false)
	if err != nil {
		return nil, err
	}
	plan.specs = append(plan.specs, stateSpec(userID, spec.MRoomMember, userID, member))

	// Power levels, and the old room's restricted ones.
	plEvent, err := get(spec.MRoomPowerLevels)
	if err != nil {
		return nil, err
	}
	oldPower, err := e.powerAt(ctx, old, old.state, nil)
	if err != nil {
		return nil, err
	}
	pl, err := draftPowerLevels(plEvent, userID)
	if err != nil {
		return nil, err
	}
	if plEvent != nil {
		plan.oldPowerLevels = restrictedPowerLevels(pl)
	}
	initial, final := upgradedPowerLevels(pl, oldPower, userID, verImpl.PrivilegedCreators(), creators)
	plan.specs = append(plan.specs, stateSpec(userID, spec.MRoomPowerLevels, "", initial.content()))

	// Copied state.
	for _, typ := range upgradeCopiedState {
		ev, err := get(typ)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			plan.specs = append(plan.specs, stateSpec(userID, typ, "", json.RawMessage(ev.Content())))
		}
	}
	if roomType == "m.space" {
		children, err := e.stateEventsOfType(ctx, old, mSpaceChild)
		if err != nil {
			return nil, err
		}
		for _, ev := range children {
			if !emptyContent(ev.Content()) { // an emptied child was removed
				plan.specs = append(plan.specs, stateSpec(userID, mSpaceChild, *ev.StateKey(), json.RawMessage(ev.Content())))
			}
		}
	}
	if ca, err := get(spec.MRoomCanonicalAlias); err != nil {
		return nil, err
	} else if ca != nil {
		kept, moved, changed := splitCanonicalAlias(ca.Content(), e.isLocalAlias)
		if changed {
			plan.specs = append(plan.specs, stateSpec(userID, spec.MRoomCanonicalAlias, "", moved))
			plan.oldAlias = kept
		}
	}

	// Bans, so that banned users do not walk into the new room.
	members, err := e.stateEventsOfType(ctx, old, spec.MRoomMember)
	if err != nil {
		return nil, err
	}
	upgrader := initial.UserLevel(spec.SenderID(userID))
	if verImpl.PrivilegedCreators() {
		upgrader = CreatorPower
	}
	for _, ev := range members {
		target := *ev.StateKey()
		if m, _ := ev.Membership(); m != spec.Ban || slices.Contains(creators, target) {
			continue
		}
		if upgrader < initial.Ban || initial.UserLevel(spec.SenderID(target)) >= upgrader {
			continue // the auth rules would refuse this ban
		}
		plan.specs = append(plan.specs, stateSpec(userID, spec.MRoomMember, target, json.RawMessage(ev.Content())))
	}
	if final != nil {
		plan.specs = append(plan.specs, stateSpec(userID, spec.MRoomPowerLevels, "", final.content()))
	}
	return plan, nil
}

// stateEventsOfType returns the room's current state events of one type,
// sorted by state key.
func (e *Engine) stateEventsOfType(ctx context.Context, ri *roomInfo, typ string) ([]*Event, error) {
	var nids []int64
	for k, nid := range ri.state {
		if k.Type == typ {
			nids = append(nids, nid)
		}
	}
	evs, err := e.EventsByNID(ctx, ri.version, nids)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(evs, func(a, b *Event) int {
		if *a.StateKey() < *b.StateKey() {
			return -1
		}
		if *a.StateKey() > *b.StateKey() {
			return 1
		}
		return 0
	})
	return evs, nil
}

func emptyContent(c []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(c, &m) != nil || len(m) == 0
}

// powerLevelsDraft is power levels content being edited: the levels as
// integers (older room versions allowed strings) plus the content's other
// keys, kept as they are.
type powerLevelsDraft struct {
	gomatrixserverlib.PowerLevelContent
	extra map[string]json.RawMessage
}

// draftPowerLevels reads a power levels event (nil: the levels a new
// private room of userID would get).
func draftPowerLevels(ev *Event, userID string) (*powerLevelsDraft, error) {
	d := &powerLevelsDraft{extra: map[string]json.RawMessage{}}
	if ev == nil {
		raw, _ := json.Marshal(defaultPowerLevels(userID, false, presets["private_chat"]))
		if err := json.Unmarshal(raw, &d.PowerLevelContent); err != nil {
			return nil, err
		}
		return d, nil
	}
	levels, err := ev.PowerLevels()
	if err != nil {
		return nil, err
	}
	d.PowerLevelContent = *levels
	_ = json.Unmarshal(ev.Content(), &d.extra)
	for _, k := range []string{"ban", "invite", "kick", "redact", "users", "users_default", "events", "events_default", "state_default", "notifications"} {
		delete(d.extra, k)
	}
	d.Users, d.Events, d.Notifications = maps.Clone(d.Users), maps.Clone(d.Events), maps.Clone(d.Notifications)
	return d, nil
}

// clone returns an independent copy.
func (d *powerLevelsDraft) clone() *powerLevelsDraft {
	c := *d
	c.Users, c.Events, c.Notifications = maps.Clone(d.Users), maps.Clone(d.Events), maps.Clone(d.Notifications)
	c.extra = maps.Clone(d.extra)
	return &c
}

// content is the draft as event content.
func (d *powerLevelsDraft) content() json.RawMessage {
	c := d.clone()
	for _, m := range []*map[string]int64{&c.Users, &c.Events, &c.Notifications} {
		if *m == nil {
			*m = map[string]int64{}
		}
	}
	raw, _ := json.Marshal(c.PowerLevelContent)
	if len(c.extra) == 0 {
		return raw
	}
	var out map[string]json.RawMessage
	_ = json.Unmarshal(raw, &out)
	for k, v := range c.extra {
		out[k] = v
	}
	raw, _ = json.Marshal(out)
	return raw
}

// upgradedPowerLevels adapts the old room's power levels to the new room.
// In rooms with privileged creators the creators may not be listed in
// users; when the old room had privileged creators and the new one has
// none, the old creators get 100. initial is sent first; when the upgrader
// needs more power than final gives to copy the state (Synapse's rule:
// the highest of state_default, ban and the event levels), initial raises
// them and final, sent last, restores the levels (final is nil otherwise).
func upgradedPowerLevels(old *powerLevelsDraft, oldPower *powerInfo, userID string, privileged bool, creators []string) (initial, final *powerLevelsDraft) {
	pl := old.clone()
	if pl.Users == nil {
		pl.Users = map[string]int64{}
	}
	if privileged {
		delete(pl.Users, userID)
		for _, c := range creators {
			delete(pl.Users, c)
		}
		return pl, nil
	}
	for c := range oldPower.creators {
		pl.Users[c] = max(pl.UserLevel(spec.SenderID(c)), 100)
	}
	needed := max(pl.StateDefault, pl.Ban)
	for _, lvl := range pl.Events {
		needed = max(needed, lvl)
	}
	if pl.UserLevel(spec.SenderID(userID)) >= needed {
		return pl, nil
	}
	raised := pl.clone()
	raised.Users[userID] = needed
	return raised, pl
}

// restrictedPowerLevels raises events_default and invite of the old room
// to max(50, users_default+1), as the spec suggests; nil when they are
// already that high.
func restrictedPowerLevels(old *powerLevelsDraft) json.RawMessage {
	pl := old.clone()
	level := max(pl.UsersDefault+1, 50)
	changed := false
	for _, v := range []*int64{&pl.EventsDefault, &pl.Invite} {
		if *v < level {
			*v, changed = level, true
		}
	}
	if !changed {
		return nil
	}
	return pl.content()
}
