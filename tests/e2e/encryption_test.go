//go:build goolm

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/palpo-go/palpo/internal/testutil"
)

// The encryption scenarios of issue 7, with real Olm and Megolm: mautrix-go's
// crypto package (goolm, pure Go) with in-memory stores, as a client that
// has no database of its own would run it.

// cryptoUser is a mautrix-go client with an Olm machine.
type cryptoUser struct {
	*mautrix.Client
	mach *crypto.OlmMachine
	// syncing is the background sync loop, once started.
	syncing *syncingUser
}

// newCryptoUser gives cli a fresh Olm account and uploads its device keys
// and one-time keys.
func newCryptoUser(t *testing.T, cli *mautrix.Client) *cryptoUser {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel).With().Str("device", cli.DeviceID.String()).Logger()
	mach := crypto.NewOlmMachine(cli, &log, &memoryStore{MemoryStore: crypto.NewMemoryStore(nil)}, cli.StateStore.(crypto.StateStore))
	noErr(t, "load the Olm machine", mach.Load(reqCtx(t)))
	noErr(t, "upload device and one-time keys", mach.ShareKeys(reqCtx(t), 0))
	return &cryptoUser{Client: cli, mach: mach}
}

// memoryStore is mautrix-go's in-memory crypto store with its cross-signing
// methods serialised: in v0.32.0 they write the store's maps under a read
// lock and hand the maps themselves out, so a sync loop storing keys while
// the test reads them is a data race (go test -race says so).
type memoryStore struct {
	*crypto.MemoryStore
	mu sync.Mutex
}

func (s *memoryStore) PutCrossSigningKey(ctx context.Context, user id.UserID, usage id.CrossSigningUsage, key id.Ed25519) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MemoryStore.PutCrossSigningKey(ctx, user, usage, key)
}

func (s *memoryStore) GetCrossSigningKeys(ctx context.Context, user id.UserID) (map[id.CrossSigningUsage]id.CrossSigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys, err := s.MemoryStore.GetCrossSigningKeys(ctx, user)
	return maps.Clone(keys), err
}

func (s *memoryStore) ResetMasterKeyTOFU(ctx context.Context, user id.UserID, key id.Ed25519) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MemoryStore.ResetMasterKeyTOFU(ctx, user, key)
}

func (s *memoryStore) PutSignature(ctx context.Context, user id.UserID, key id.Ed25519, signer id.UserID, signerKey id.Ed25519, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MemoryStore.PutSignature(ctx, user, key, signer, signerKey, sig)
}

func (s *memoryStore) GetSignaturesForKeyBy(ctx context.Context, user id.UserID, key id.Ed25519, signer id.UserID) (map[id.Ed25519]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sigs, err := s.MemoryStore.GetSignaturesForKeyBy(ctx, user, key, signer)
	return maps.Clone(sigs), err
}

func (s *memoryStore) IsKeySignedBy(ctx context.Context, user id.UserID, key id.Ed25519, signer id.UserID, signerKey id.Ed25519) (bool, error) {
	sigs, err := s.GetSignaturesForKeyBy(ctx, user, key, signer)
	_, ok := sigs[signerKey]
	return ok, err
}

func (s *memoryStore) DropSignaturesByKey(ctx context.Context, user id.UserID, key id.Ed25519) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MemoryStore.DropSignaturesByKey(ctx, user, key)
}

// loginCrypto logs localpart in on a new device with a fresh Olm account.
func loginCrypto(t *testing.T, srv *testutil.Server, localpart, password, deviceName string) *cryptoUser {
	t.Helper()
	return newCryptoUser(t, must(login(t, srv, localpart, password, deviceName))(t, "log in "+localpart))
}

// hooks plug the Olm machine into a syncer as a client does: each sync
// response (to-device messages, device lists, one-time key counts) and
// each event (room state, membership changes) reach it before the test
// sees them.
func (u *cryptoUser) hooks(s *mautrix.DefaultSyncer) {
	s.OnSync(u.mach.ProcessSyncResponse)
	s.OnEvent(func(ctx context.Context, evt *event.Event) {
		u.StateStoreSyncHandler(ctx, evt)
		if evt.Type == event.StateMember {
			u.mach.HandleMemberEvent(ctx, evt)
		}
	})
}

// start runs the user's sync loop until the test ends.
func (u *cryptoUser) start(t *testing.T) *cryptoUser {
	u.syncing = startSyncing(t, u.Client, u.hooks)
	return u
}

// sendEncrypted sends an encrypted text message to room, sharing a new
// Megolm session with the room's members' devices when needed.
func (u *cryptoUser) sendEncrypted(t *testing.T, room id.RoomID, body string) id.EventID {
	t.Helper()
	ctx := reqCtx(t)
	content := &event.MessageEventContent{MsgType: event.MsgText, Body: body}
	enc, err := u.mach.EncryptMegolmEvent(ctx, room, event.EventMessage, content)
	if crypto.IsShareError(err) {
		members := must(u.StateStore.GetRoomJoinedOrInvitedMembers(ctx, room))(t, "room members")
		noErr(t, "share the Megolm session", u.mach.ShareGroupSession(ctx, room, members))
		enc, err = u.mach.EncryptMegolmEvent(ctx, room, event.EventMessage, content)
	}
	noErr(t, "encrypt "+body, err)
	return must(u.SendMessageEvent(ctx, room, event.EventEncrypted, enc))(t, "send "+body).EventID
}

// decrypt decrypts an encrypted event, waiting for its room key.
func (u *cryptoUser) decrypt(t *testing.T, evt *event.Event) *event.Event {
	t.Helper()
	ctx := reqCtx(t)
	if evt.Content.Parsed == nil {
		noErr(t, "parse encrypted content", evt.Content.ParseRaw(event.EventEncrypted))
	}
	enc := evt.Content.AsEncrypted()
	if !u.mach.WaitForSession(ctx, evt.RoomID, enc.SenderKey, enc.SessionID, waitTimeout) {
		t.Fatalf("%s/%s never received the room key of %s (session %s)", u.UserID, u.DeviceID, evt.ID, enc.SessionID)
	}
	return must(u.mach.DecryptMegolmEvent(ctx, evt))(t, "decrypt "+evt.ID.String())
}

// requireDecrypts waits until u's syncer sees evID and checks that it
// decrypts to a text message from sender with body.
func (u *cryptoUser) requireDecrypts(t *testing.T, room id.RoomID, evID id.EventID, sender id.UserID, body string) {
	t.Helper()
	evt, _ := u.syncing.waitFor(0, "encrypted message "+body, inRoom(room, event.EventEncrypted, isEvent(evID)))
	requirePlaintext(t, u, u.decrypt(t, evt), sender, body)
}

// requirePlaintext checks a decrypted text message.
func requirePlaintext(t *testing.T, u *cryptoUser, dec *event.Event, sender id.UserID, body string) {
	t.Helper()
	if dec.Sender != sender || dec.Type != event.EventMessage || dec.Content.AsMessage().Body != body {
		t.Fatalf("%s/%s decrypted %s from %s as %s %q, want a message %q from %s", u.UserID, u.DeviceID, dec.ID, dec.Sender, dec.Type.Type, dec.Content.AsMessage().Body, body, sender)
	}
}

// waitForDevice waits until u's Olm machine knows user's device (it learns
// of it through device_lists in /sync).
func (u *cryptoUser) waitForDevice(t *testing.T, user id.UserID, device id.DeviceID) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		devices := must(u.mach.CryptoStore.GetDevices(reqCtx(t), user))(t, "devices")
		if devices[device] != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s did not learn of %s's device %s through device_lists", u.UserID, u.DeviceID, user, device)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createEncryptedRoom makes creator create an encrypted private room and
// invite the others, who join; everyone's syncer sees every join.
func createEncryptedRoom(t *testing.T, creator *cryptoUser, others ...*cryptoUser) id.RoomID {
	t.Helper()
	var invite []id.UserID
	for _, o := range others {
		invite = append(invite, o.UserID)
	}
	room := must(creator.CreateRoom(reqCtx(t), &mautrix.ReqCreateRoom{
		Preset: "private_chat", Invite: invite,
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
	}))(t, "create the encrypted room").RoomID
	for _, o := range others {
		must(o.JoinRoomByID(reqCtx(t), room))(t, "join")
	}
	for _, u := range append([]*cryptoUser{creator}, others...) {
		for _, o := range others {
			u.syncing.waitFor(0, o.UserID.String()+"'s join", inRoom(room, event.StateMember, isMembership(o.UserID, event.MembershipJoin)))
		}
	}
	return room
}

// TestEncryptedChat is issue 7's client check on one server: two users
// chat in an encrypted room and each decrypts the other's messages; a
// third device joins later and receives the keys of later messages; a
// device whose one-time keys are exhausted still decrypts (fallback key);
// cross-signing makes a second device verified in the other user's eyes;
// a fresh device restores room keys from the key backup and decrypts old
// messages.
func TestEncryptedChat(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newCryptoUser(t, srv.RegisterMautrix(t, "alice", "alice-password")).start(t)
		bob := newCryptoUser(t, srv.RegisterMautrix(t, "bob", "bob-password")).start(t)
		room := createEncryptedRoom(t, alice, bob)

		// Both ways.
		hello := alice.sendEncrypted(t, room, "Hello Bob, in secret")
		bob.requireDecrypts(t, room, hello, alice.UserID, "Hello Bob, in secret")
		reply := bob.sendEncrypted(t, room, "Hi Alice, also in secret")
		alice.requireDecrypts(t, room, reply, bob.UserID, "Hi Alice, also in secret")

		// Bob's third device: Alice learns of it through device_lists and
		// shares her next session with it.
		bob2 := loginCrypto(t, srv, "bob", "bob-password", "bob's tablet").start(t)
		alice.waitForDevice(t, bob.UserID, bob2.DeviceID)
		later := alice.sendEncrypted(t, room, "Bob has a tablet now")
		bob2.requireDecrypts(t, room, later, alice.UserID, "Bob has a tablet now")
		bob.requireDecrypts(t, room, later, alice.UserID, "Bob has a tablet now")

		t.Run("fallback key", func(t *testing.T) { testFallbackKey(t, srv, alice, bob, room) })
		t.Run("cross-signing", func(t *testing.T) { testCrossSigning(t, srv, alice, bob) })
		t.Run("key backup", func(t *testing.T) { testKeyBackup(t, srv, bob, room, hello) })
	})
}

// testFallbackKey: a device that is offline while others exhaust its
// one-time keys is reached through its fallback key.
func testFallbackKey(t *testing.T, srv *testutil.Server, alice, bob *cryptoUser, room id.RoomID) {
	offline := loginCrypto(t, srv, "bob", "bob-password", "bob's laptop")
	uploadFallbackKey(t, offline)
	alice.waitForDevice(t, bob.UserID, offline.DeviceID)
	// Someone claims every one-time key of the offline device.
	claimed := 0
	for {
		resp := must(bob.ClaimKeys(reqCtx(t), &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
			bob.UserID: {offline.DeviceID: id.KeyAlgorithmSignedCurve25519},
		}}))(t, "claim a one-time key")
		keys := resp.OneTimeKeys[bob.UserID][offline.DeviceID]
		if len(keys) != 1 {
			t.Fatalf("claim %d returned %d keys", claimed, len(keys))
		}
		var key mautrix.OneTimeKey
		for _, k := range keys {
			key = k
		}
		if key.Fallback {
			break
		}
		if claimed++; claimed > 200 {
			t.Fatal("the one-time keys never ran out")
		}
	}
	if claimed == 0 {
		t.Fatal("the device had no one-time keys to exhaust")
	}
	msg := alice.sendEncrypted(t, room, "Sent while the laptop was off")
	offline.start(t)
	offline.requireDecrypts(t, room, msg, alice.UserID, "Sent while the laptop was off")
}

// uploadFallbackKey makes u's Olm account generate a fallback key and
// uploads it (mautrix-go's machine uploads one-time keys only).
func uploadFallbackKey(t *testing.T, u *cryptoUser) {
	t.Helper()
	acct := u.mach.GetAccount()
	internal, ok := acct.Internal.(*account.Account)
	if !ok {
		t.Fatalf("the Olm account is %T, not goolm's", acct.Internal)
	}
	noErr(t, "generate a fallback key", internal.GenFallbackKey())
	keys := map[string]mautrix.OneTimeKey{}
	for keyID, pub := range internal.FallbackKey() {
		k := mautrix.OneTimeKey{Key: pub, Fallback: true}
		sig := must(acct.SignJSON(k))(t, "sign the fallback key")
		k.Signatures = signatures.NewSingleSignature(u.UserID, id.KeyAlgorithmEd25519, u.DeviceID.String(), sig)
		keys[id.NewKeyID(id.KeyAlgorithmSignedCurve25519, keyID).String()] = k
	}
	_, err := u.MakeRequest(reqCtx(t), "POST", u.BuildClientURL("v3", "keys", "upload"), map[string]any{"fallback_keys": keys}, nil)
	noErr(t, "upload the fallback key", err)
	internal.MarkKeysAsPublished()
}

// testCrossSigning: Alice bootstraps cross-signing and signs her second
// device; Bob sees the device cross-signed through /keys/query, and
// verified once he signs Alice's master key.
func testCrossSigning(t *testing.T, srv *testutil.Server, alice, bob *cryptoUser) {
	ctx := reqCtx(t)
	// The first upload needs no authentication; were it asked for, the
	// password would do.
	uia := func(localpart, password string) mautrix.UIACallback {
		return func(r *mautrix.RespUserInteractive) any {
			return passwordAuth(r.Session, localpart, password)
		}
	}
	_, _, err := alice.mach.GenerateAndUploadCrossSigningKeys(ctx, uia("alice", "alice-password"), "")
	noErr(t, "bootstrap alice's cross-signing", err)
	alice2 := loginCrypto(t, srv, "alice", "alice-password", "alice's phone")
	device := must(alice.mach.GetOrFetchDevice(ctx, alice.UserID, alice2.DeviceID))(t, "alice's second device")
	noErr(t, "sign alice's second device", alice.mach.SignOwnDevice(ctx, device))

	// The server serves the self-signing signature to Bob.
	q := must(bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}}))(t, "query alice's keys")
	selfSigning, master := q.SelfSigningKeys[alice.UserID], q.MasterKeys[alice.UserID]
	ssk := selfSigning.FirstKey()
	if _, ok := q.DeviceKeys[alice.UserID][alice2.DeviceID].Signatures[alice.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.String())]; !ok {
		t.Fatalf("alice's second device is not signed by her self-signing key %s in bob's /keys/query: %+v", ssk, q.DeviceKeys[alice.UserID][alice2.DeviceID].Signatures)
	}
	_, err = bob.mach.FetchKeys(ctx, []id.UserID{alice.UserID}, true)
	noErr(t, "fetch alice's keys", err)
	dev := must(bob.mach.GetOrFetchDevice(ctx, alice.UserID, alice2.DeviceID))(t, "alice's second device for bob")
	if trust := must(bob.mach.ResolveTrustContext(ctx, dev))(t, "trust"); trust != id.TrustStateCrossSignedTOFU {
		t.Fatalf("bob's trust in alice's cross-signed device: %s, want %s", trust, id.TrustStateCrossSignedTOFU)
	}

	// Bob verifies Alice: he bootstraps cross-signing and signs her
	// master key with his user-signing key; the device is then verified.
	_, _, err = bob.mach.GenerateAndUploadCrossSigningKeys(ctx, uia("bob", "bob-password"), "")
	noErr(t, "bootstrap bob's cross-signing", err)
	noErr(t, "sign alice's master key", bob.mach.SignUser(ctx, alice.UserID, master.FirstKey()))
	_, err = bob.mach.FetchKeys(ctx, []id.UserID{alice.UserID}, true)
	noErr(t, "fetch alice's keys again", err)
	if trust := must(bob.mach.ResolveTrustContext(ctx, dev))(t, "trust"); trust != id.TrustStateCrossSignedVerified {
		t.Fatalf("bob's trust in alice's device after verifying alice: %s, want %s", trust, id.TrustStateCrossSignedVerified)
	}
	// The signature is Bob's alone: the server shows it to him, not to Alice.
	mine := must(bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}}))(t, "query as bob")
	if len(mine.MasterKeys[alice.UserID].Signatures[bob.UserID]) == 0 {
		t.Fatal("bob's signature on alice's master key is not served to bob")
	}
	theirs := must(alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}}))(t, "query as alice")
	if len(theirs.MasterKeys[alice.UserID].Signatures[bob.UserID]) != 0 {
		t.Fatal("alice sees bob's user-signing signature")
	}
}

// testKeyBackup: Bob backs up the room key of an old message; a fresh
// device of his restores it from the backup and decrypts the message.
func testKeyBackup(t *testing.T, srv *testutil.Server, bob *cryptoUser, room id.RoomID, old id.EventID) {
	ctx := reqCtx(t)
	key := must(backup.NewMegolmBackupKey())(t, "backup key")
	authData := backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(key.PublicKey().Bytes()))}
	version := must(bob.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
		Algorithm: id.KeyBackupAlgorithmMegolmBackupV1, AuthData: authData,
	}))(t, "create the backup").Version

	evt := must(bob.GetEvent(ctx, room, old))(t, "fetch the old message")
	noErr(t, "parse", evt.Content.ParseRaw(evt.Type))
	sessionID := evt.Content.AsEncrypted().SessionID
	sess := must(bob.mach.CryptoStore.GetGroupSession(ctx, room, sessionID))(t, "bob's session")
	if sess == nil {
		t.Fatalf("bob has no session %s", sessionID)
	}
	first := sess.Internal.FirstKnownIndex()
	exported := must(sess.Internal.Export(first))(t, "export the session")
	data := must(backup.EncryptSessionData(key, backup.MegolmSessionData{
		Algorithm: id.AlgorithmMegolmV1, SenderKey: sess.SenderKey, SessionKey: string(exported),
		SenderClaimedKeys: backup.SenderClaimedKeys{Ed25519: sess.SigningKey}, ForwardingKeyChain: []string{},
	}))(t, "encrypt the session")
	raw := must(json.Marshal(data))(t, "marshal")
	put := must(bob.PutKeysInBackupForRoomAndSession(ctx, version, room, sessionID, &mautrix.ReqKeyBackupData{
		FirstMessageIndex: int(first), SessionData: raw,
	}))(t, "back the session up")
	if put.Count != 1 {
		t.Fatalf("backup count %d after one session, want 1", put.Count)
	}

	fresh := loginCrypto(t, srv, "bob", "bob-password", "bob's new phone")
	got := must(fresh.mach.DownloadAndStoreLatestKeyBackup(ctx, key))(t, "restore the backup")
	if got != version {
		t.Fatalf("restored version %s, want %s", got, version)
	}
	oldEvt := must(fresh.GetEvent(ctx, room, old))(t, "fetch the old message on the new device")
	oldEvt.RoomID = room
	requirePlaintext(t, fresh, fresh.decrypt(t, oldEvt), evt.Sender, "Hello Bob, in secret")
}

// TestEncryptedMessageSurvivesRestart: the room key Alice sends to Bob's
// device while it is offline waits in its to-device queue across a server
// restart, and Bob decrypts her message afterwards.
func TestEncryptedMessageSurvivesRestart(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newCryptoUser(t, srv.RegisterMautrix(t, "alice", "alice-password"))
		bob := newCryptoUser(t, srv.RegisterMautrix(t, "bob", "bob-password"))
		room := must(alice.CreateRoom(reqCtx(t), &mautrix.ReqCreateRoom{
			Preset: "private_chat", Invite: []id.UserID{bob.UserID},
			InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
		}))(t, "create the encrypted room").RoomID
		must(bob.JoinRoomByID(reqCtx(t), room))(t, "join")
		// Alice's client learns the room's state from one sync.
		syncOnce(t, alice)
		msg := alice.sendEncrypted(t, room, "Read me after the restart")

		srv.Restart(t)
		evs := syncOnce(t, bob)
		i := slices.IndexFunc(evs, func(e *event.Event) bool { return e.ID == msg })
		if i < 0 {
			t.Fatalf("bob's sync after the restart lacks %s", msg)
		}
		requirePlaintext(t, bob, bob.decrypt(t, evs[i]), alice.UserID, "Read me after the restart")
	})
}

// syncOnce makes one initial /sync for u, hands it to u's Olm machine and
// state store as its sync loop would, and returns the events it carried.
func syncOnce(t *testing.T, u *cryptoUser) []*event.Event {
	t.Helper()
	syncer := mautrix.NewDefaultSyncer()
	u.hooks(syncer)
	var evs []*event.Event
	syncer.OnEvent(func(_ context.Context, evt *event.Event) { evs = append(evs, evt) })
	resp := must(u.FullSyncRequest(reqCtx(t), mautrix.ReqSync{Timeout: 0}))(t, "sync")
	noErr(t, "process the sync", syncer.ProcessResponse(reqCtx(t), resp, ""))
	return evs
}
