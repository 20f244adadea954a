package rooms

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// CreateRoomRequest is the body of POST /createRoom.
type CreateRoomRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             string                     `json:"room_alias_name"`
	Name                      *string                    `json:"name"`
	Topic                     *string                    `json:"topic"`
	Invite                    []string                   `json:"invite"`
	RoomVersion               string                     `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []InitialStateEvent        `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

// InitialStateEvent is one entry of initial_state.
type InitialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// presetDefaults are the state a preset sets up.
type presetDefaults struct {
	joinRule, history, guestAccess string
	inviteLevel                    int64
	inviteesAreAdmins              bool
}

var presets = map[string]presetDefaults{
	"private_chat":         {"invite", "shared", "can_join", 0, false},
	"trusted_private_chat": {"invite", "shared", "can_join", 0, true},
	"public_chat":          {"public", "shared", "forbidden", 50, false},
}

// CreateRoom creates a room as the spec's POST /createRoom describes and
// returns its ID. All of its initial events are stored in one transaction.
func (e *Engine) CreateRoom(ctx context.Context, creator string, req *CreateRoomRequest) (string, error) {
	ver := DefaultRoomVersion
	if req.RoomVersion != "" {
		ver = gomatrixserverlib.RoomVersion(req.RoomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil || !gomatrixserverlib.StableRoomVersion(ver) {
		return "", httpx.NewError(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %q is not supported", req.RoomVersion)
	}
	preset := req.Preset
	if preset == "" {
		preset = "private_chat"
		if req.Visibility == "public" {
			preset = "public_chat"
		}
	}
	pd, ok := presets[preset]
	if !ok {
		return "", httpx.BadJSON("Unknown preset %q", req.Preset)
	}
	if req.Visibility != "" && req.Visibility != "public" && req.Visibility != "private" {
		return "", httpx.BadJSON("visibility must be public or private")
	}
	for _, u := range req.Invite {
		if _, err := spec.NewUserID(u, true); err != nil {
			return "", httpx.InvalidParam("Invalid user ID to invite: %q", u)
		}
	}
	var alias string
	if req.RoomAliasName != "" {
		if strings.ContainsAny(req.RoomAliasName, ":# \t\n") {
			return "", httpx.InvalidParam("room_alias_name must be a plain local name")
		}
		alias = "#" + req.RoomAliasName + ":" + string(e.serverName)
		if len(alias) > 255 {
			return "", httpx.InvalidParam("Room alias is too long")
		}
		if id, err := e.ResolveAlias(ctx, alias); err != nil {
			return "", err
		} else if id != "" {
			return "", httpx.NewError(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias already taken")
		}
	}

	// m.room.create
	create := map[string]any{}
	for k, v := range req.CreationContent {
		create[k] = v
	}
	create["room_version"] = string(ver)
	if !verImpl.CreatorInCreateEvent() {
		delete(create, "creator")
	} else {
		create["creator"] = creator
	}
	var additional []string
	if verImpl.PrivilegedCreators() {
		if raw, ok := req.CreationContent["additional_creators"]; ok {
			if err := json.Unmarshal(raw, &additional); err != nil {
				return "", httpx.BadJSON("additional_creators must be a list of user IDs")
			}
			for _, u := range additional {
				if validUserID(u) != nil {
					return "", httpx.BadJSON("additional_creators: %q is not a user ID", u)
				}
			}
		}
		if pd.inviteesAreAdmins {
			additional = append(additional, req.Invite...)
		}
		if len(additional) > 0 {
			create["additional_creators"] = additional
		}
	}
	empty := ""
	specs := []EventSpec{{Sender: creator, Type: spec.MRoomCreate, StateKey: &empty, Content: create}}

	// The creator joins.
	member, err := e.memberContent(ctx, creator, spec.Join, "", req.IsDirect && false)
	if err != nil {
		return "", err
	}
	specs = append(specs, stateSpec(creator, spec.MRoomMember, creator, member))

	// m.room.power_levels
	pl := defaultPowerLevels(creator, verImpl.PrivilegedCreators(), pd)
	if pd.inviteesAreAdmins && !verImpl.PrivilegedCreators() {
		for _, u := range req.Invite {
			pl["users"].(map[string]int64)[u] = 100
		}
	}
	plJSON, _ := json.Marshal(pl)
	if len(req.PowerLevelContentOverride) > 0 {
		var merged map[string]json.RawMessage
		_ = json.Unmarshal(plJSON, &merged)
		for k, v := range req.PowerLevelContentOverride {
			merged[k] = v
		}
		if verImpl.PrivilegedCreators() {
			// Creators have infinite power and may not be listed (v12).
			var users map[string]json.RawMessage
			if json.Unmarshal(merged["users"], &users) == nil {
				for _, c := range append([]string{creator}, additional...) {
					if _, listed := users[c]; listed {
						return "", httpx.BadJSON("%s is a creator of the room and cannot be listed in power levels", c)
					}
				}
			}
		}
		plJSON, _ = json.Marshal(merged)
		var check gomatrixserverlib.PowerLevelContent
		if err := json.Unmarshal(plJSON, &check); err != nil {
			return "", httpx.BadJSON("power_level_content_override: %v", err)
		}
	}
	specs = append(specs, stateSpec(creator, spec.MRoomPowerLevels, "", json.RawMessage(plJSON)))

	if alias != "" {
		specs = append(specs, stateSpec(creator, spec.MRoomCanonicalAlias, "", map[string]string{"alias": alias}))
	}
	// Preset state, unless initial_state overrides it.
	overridden := map[StateKey]bool{}
	for _, is := range req.InitialState {
		overridden[StateKey{is.Type, is.StateKey}] = true
	}
	addUnlessOverridden := func(typ string, content any) {
		if !overridden[StateKey{typ, ""}] {
			specs = append(specs, stateSpec(creator, typ, "", content))
		}
	}
	addUnlessOverridden(spec.MRoomJoinRules, map[string]string{"join_rule": pd.joinRule})
	addUnlessOverridden(spec.MRoomHistoryVisibility, map[string]string{"history_visibility": pd.history})
	addUnlessOverridden("m.room.guest_access", map[string]string{"guest_access": pd.guestAccess})
	for _, is := range req.InitialState {
		if is.Type == "" || is.Type == spec.MRoomCreate || is.Type == spec.MRoomMember || is.Type == spec.MRoomPowerLevels {
			if is.Type == "" {
				return "", httpx.BadJSON("initial_state events need a type")
			}
			continue // Synapse ignores these too: the server makes them itself.
		}
		content := is.Content
		if len(content) == 0 {
			content = json.RawMessage("{}")
		}
		specs = append(specs, stateSpec(creator, is.Type, is.StateKey, content))
	}
	if req.Name != nil {
		specs = append(specs, stateSpec(creator, spec.MRoomName, "", map[string]string{"name": *req.Name}))
	}
	if req.Topic != nil {
		specs = append(specs, stateSpec(creator, spec.MRoomTopic, "", topicContent(*req.Topic)))
	}
	var remoteInvitees []string
	for _, u := range req.Invite {
		if e.Remote != nil && !e.isLocalUser(u) {
			// Invited over federation once the room exists.
			remoteInvitees = append(remoteInvitees, u)
			continue
		}
		c := map[string]any{"membership": spec.Invite}
		if req.IsDirect {
			c["is_direct"] = true
		}
		specs = append(specs, stateSpec(creator, spec.MRoomMember, u, c))
	}

	ri := &roomInfo{version: ver, verImpl: verImpl, state: StateMap{}}
	if !verImpl.DomainlessRoomIDs() {
		ri.id = "!" + randomString(18) + ":" + string(e.serverName)
	}
	// New rooms cannot collide, but take the lock of the final ID for v<12.
	unlock := func() {}
	if ri.id != "" {
		unlock = e.lockRoom(ri.id)
	}
	evs, err := e.sendLocked(ctx, ri, specs, true)
	unlock()
	if err != nil {
		return "", err
	}
	roomID := evs[0].RoomID().String()
	e.inviteRemoteInvitees(ctx, roomID, creator, remoteInvitees, req.IsDirect)
	if alias != "" {
		if err := e.SetAlias(ctx, alias, roomID, creator); err != nil {
			return "", err
		}
	}
	if req.Visibility == "public" {
		if err := e.SetPublished(ctx, roomID, true); err != nil {
			return "", err
		}
	}
	return roomID, nil
}

func stateSpec(sender, typ, stateKey string, content any) EventSpec {
	sk := stateKey
	return EventSpec{Sender: sender, Type: typ, StateKey: &sk, Content: content}
}

// topicContent is the content of m.room.topic: the plain topic plus its
// m.topic text representation.
func topicContent(topic string) map[string]any {
	return map[string]any{
		"topic":   topic,
		"m.topic": map[string]any{"m.text": []map[string]string{{"body": topic, "mimetype": "text/plain"}}},
	}
}

func defaultPowerLevels(creator string, privilegedCreators bool, pd presetDefaults) map[string]any {
	users := map[string]int64{}
	// Upgrading needs more than any admin can have in v12 (creators only).
	tombstone := int64(150)
	if !privilegedCreators {
		users[creator] = 100
		tombstone = 100
	}
	return map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         pd.inviteLevel,
		"events": map[string]int64{
			spec.MRoomName:              50,
			spec.MRoomPowerLevels:       100,
			spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias:    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          tombstone,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
		"notifications": map[string]int64{"room": 50},
	}
}

// memberContent builds the content of a membership event, with the user's
// profile for joins of local users.
func (e *Engine) memberContent(ctx context.Context, userID, membership, reason string, isDirect bool) (map[string]any, error) {
	c := map[string]any{"membership": membership}
	if reason != "" {
		c["reason"] = reason
	}
	if isDirect {
		c["is_direct"] = true
	}
	if membership == spec.Join && e.profiles != nil {
		dn, av, err := e.profiles(ctx, userID)
		if err != nil {
			return nil, err
		}
		if dn != nil {
			c["displayname"] = *dn
		}
		if av != nil {
			c["avatar_url"] = *av
		}
	}
	return c, nil
}
