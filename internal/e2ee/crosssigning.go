package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Cross-signing (client-server spec, "Cross-signing"): each user's master,
// self-signing and user-signing keys, and the signatures users make with
// them on devices and on other users' master keys.

// Cross-signing key types, as stored and as named in usage.
const (
	keyMaster      = "master"
	keySelfSigning = "self_signing"
	keyUserSigning = "user_signing"
)

// crossSigningKey is a stored or uploaded cross-signing key.
type crossSigningKey struct {
	raw []byte // canonical JSON
	pub string // unpadded base64 public key
}

// keyID is the key's ID in signatures: "ed25519:<public key>".
func (k crossSigningKey) keyID() string { return "ed25519:" + k.pub }

// crossSigningKeys returns a user's cross-signing keys by type.
func (s *Service) crossSigningKeys(ctx context.Context, userID string) (map[string]crossSigningKey, error) {
	rows, err := s.db.Query(ctx, `SELECT key_type, key_json FROM e2ee_cross_signing_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]crossSigningKey{}
	for rows.Next() {
		var typ, js string
		if err := rows.Scan(&typ, &js); err != nil {
			return nil, err
		}
		k, err := decodeKeyObject(json.RawMessage(js), typ+" key")
		if err != nil {
			return nil, err
		}
		for _, pub := range k.Keys { // checked on upload: exactly one
			out[typ] = crossSigningKey{raw: []byte(js), pub: pub}
		}
	}
	return out, rows.Err()
}

// checkCrossSigningKey checks an uploaded cross-signing key of userID with
// the given usage: its owner, its usage and its one ed25519 key.
func checkCrossSigningKey(raw json.RawMessage, userID, usage string) (*crossSigningKey, error) {
	what := usage + " key"
	k, err := decodeKeyObject(raw, what)
	if err != nil {
		return nil, err
	}
	if k.UserID != userID {
		return nil, httpx.InvalidParam("The %s must be for user %s", what, userID)
	}
	if !slices.Contains(k.Usage, usage) {
		return nil, httpx.InvalidParam("The usage of the %s must include %s", what, usage)
	}
	if len(k.Keys) != 1 {
		return nil, httpx.InvalidParam("The %s must hold exactly one key", what)
	}
	var pub string
	for id, v := range k.Keys {
		alg, p, _ := strings.Cut(id, ":")
		if alg != "ed25519" || p != v {
			return nil, httpx.InvalidParam("The %s must be an ed25519 key named ed25519:<public key>", what)
		}
		pub = p
	}
	if _, ok := parseEd25519(pub); !ok || !validText(pub) {
		return nil, httpx.InvalidParam("The %s is not a valid ed25519 public key", what)
	}
	c, err := canonical(raw)
	if err != nil {
		return nil, httpx.BadJSON("%s: %v", what, err)
	}
	return &crossSigningKey{raw: c, pub: pub}, nil
}

// present reports whether an optional JSON member was sent (and not null).
func present(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

func (s *Service) handleDeviceSigningUpload(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		MasterKey      json.RawMessage    `json:"master_key"`
		SelfSigningKey json.RawMessage    `json:"self_signing_key"`
		UserSigningKey json.RawMessage    `json:"user_signing_key"`
		Auth           *accounts.AuthDict `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	upload := map[string]*crossSigningKey{}
	for typ, raw := range map[string]json.RawMessage{keyMaster: req.MasterKey, keySelfSigning: req.SelfSigningKey, keyUserSigning: req.UserSigningKey} {
		if !present(raw) {
			continue
		}
		k, err := checkCrossSigningKey(raw, p.UserID, typ)
		if err != nil {
			return nil, err
		}
		upload[typ] = k
	}
	existing, err := s.crossSigningKeys(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	// Uploading the keys the server has is a no-op that needs no
	// authentication (a retry of a request whose answer was lost).
	changed := map[string]*crossSigningKey{}
	for typ, k := range upload {
		if old, ok := existing[typ]; !ok || string(old.raw) != string(k.raw) {
			changed[typ] = k
		}
	}
	if len(changed) == 0 {
		return httpx.Empty, nil
	}
	master, hasMaster := existing[keyMaster]
	if k := upload[keyMaster]; k != nil {
		master, hasMaster = *k, true
	}
	if !hasMaster {
		return nil, httpx.MissingParam("No master key is available to sign the other keys")
	}
	for _, typ := range []string{keySelfSigning, keyUserSigning} {
		if k := upload[typ]; k != nil && !verifyWith(k.raw, p.UserID, master.keyID(), master.pub) {
			return nil, invalidSignature("The %s key is not signed by the master key", typ)
		}
	}
	devices, err := s.accounts.ListDevices(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	for _, d := range devices {
		for _, k := range upload {
			if d.DeviceID == k.pub {
				return nil, httpx.Forbidden("The public key %s is in use as a device ID", k.pub)
			}
		}
	}
	// Replacing keys needs the account's password (spec v1.11): only the
	// very first upload is free.
	if _, ok := existing[keyMaster]; ok {
		if _, err := s.accounts.CheckUIA(ctx, accounts.UIA{Flows: [][]string{{accounts.StagePassword}}, UserID: p.UserID}, req.Auth); err != nil {
			return nil, err
		}
	}
	var pos int64
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		for typ, k := range changed {
			if old, ok := existing[typ]; ok {
				if err := dropStaleSignatures(ctx, tx, p.UserID, typ, old); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO e2ee_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, p.UserID, typ, string(k.raw)); err != nil {
				return err
			}
		}
		var err error
		pos, err = recordDeviceListChange(ctx, tx, p.UserID, "")
		return err
	})
	if err != nil {
		return nil, err
	}
	s.afterDeviceListChange(ctx, p.UserID, "", pos)
	return httpx.Empty, nil
}

// dropStaleSignatures deletes the signatures a replaced key leaves
// meaningless: those on an old master key, and those an old self-signing
// or user-signing key made.
func dropStaleSignatures(ctx context.Context, tx *db.Tx, userID, typ string, old crossSigningKey) error {
	if typ == keyMaster {
		_, err := tx.Exec(ctx, `DELETE FROM e2ee_key_signatures WHERE user_id = $1 AND key_id = $2`, userID, old.pub)
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM e2ee_key_signatures WHERE signer_user_id = $1 AND signer_key_id = $2`, userID, old.keyID())
	return err
}

// verifyWith checks signer's signature with the ed25519 key keyID (public
// key pub, unpadded base64) on the signed object raw.
func verifyWith(raw []byte, signer, keyID, pub string) bool {
	k, ok := parseEd25519(pub)
	return ok && verifySigned(raw, signer, keyID, k)
}

// newSignature is a signature to store: signer's key signerKey on
// (user, keyID).
type newSignature struct {
	user, keyID, signer, signerKey, sig string
}

func (s *Service) handleSignaturesUpload(r *http.Request, p *httpx.Principal) (any, error) {
	var req map[string]map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	mine, err := s.crossSigningKeys(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	failures := map[string]map[string]any{}
	fail := func(user, keyID string, e *httpx.Error) {
		if failures[user] == nil {
			failures[user] = map[string]any{}
		}
		failures[user][keyID] = errorObject(e)
	}
	var sigs []newSignature
	for user, byKey := range req {
		for keyID, raw := range byKey {
			var got []newSignature
			var err error
			switch {
			case !validUserID(user) || !validText(keyID):
				err = httpx.InvalidParam("Invalid user or key ID")
			case len(raw) == 0 || raw[0] != '{':
				err = httpx.BadJSON("The signed key must be an object")
			case user == p.UserID:
				got, err = s.selfSignatures(ctx, p.UserID, keyID, raw, mine)
			default:
				got, err = s.userSignature(ctx, p.UserID, user, keyID, raw, mine)
			}
			var refused *httpx.Error
			if errors.As(err, &refused) {
				fail(user, keyID, refused)
				continue
			}
			if err != nil {
				return nil, err
			}
			sigs = append(sigs, got...)
		}
	}
	if len(sigs) > 0 {
		if err := s.storeSignatures(ctx, p.UserID, sigs); err != nil {
			return nil, err
		}
	}
	return map[string]any{"failures": failures}, nil
}

// signedBy returns the signatures of signer on the uploaded object.
func signedBy(raw []byte, signer string) map[string]string {
	var obj struct {
		Signatures signatures `json:"signatures"`
	}
	_ = json.Unmarshal(raw, &obj)
	return obj.Signatures[signer]
}

// selfSignatures checks signatures a user made on their own keys: their
// devices' signatures on their master key, or their self-signing key's
// signature on one of their devices. A refused signature is an *httpx.Error.
func (s *Service) selfSignatures(ctx context.Context, userID, keyID string, raw []byte, mine map[string]crossSigningKey) ([]newSignature, error) {
	if master, ok := mine[keyMaster]; ok && keyID == master.pub {
		if !sameSignedContent(raw, master.raw) {
			return nil, httpx.InvalidParam("The signed object is not the master key")
		}
		keys, err := s.deviceKeysOf(ctx, userID)
		if err != nil {
			return nil, err
		}
		var out []newSignature
		for sigKey, sig := range signedBy(raw, userID) {
			device, ok := strings.CutPrefix(sigKey, "ed25519:")
			dk, known := keys[device]
			if !ok || !known {
				continue
			}
			k, err := decodeKeyObject(dk, "device keys")
			if err == nil && verifyWith(raw, userID, sigKey, k.Keys[sigKey]) {
				out = append(out, newSignature{userID, keyID, userID, sigKey, sig})
			}
		}
		if len(out) == 0 {
			return nil, invalidSignature("No valid signature of one of your devices")
		}
		return out, nil
	}
	keys, err := s.deviceKeysOf(ctx, userID)
	if err != nil {
		return nil, err
	}
	dk, ok := keys[keyID]
	if !ok {
		return nil, httpx.NotFound("Unknown device or key %s", keyID)
	}
	if !sameSignedContent(raw, dk) {
		return nil, httpx.InvalidParam("The signed object is not the keys of device %s", keyID)
	}
	ssk, ok := mine[keySelfSigning]
	if !ok {
		return nil, httpx.NotFound("No self-signing key is uploaded")
	}
	sig, ok := signedBy(raw, userID)[ssk.keyID()]
	if !ok || !verifyWith(raw, userID, ssk.keyID(), ssk.pub) {
		return nil, invalidSignature("No valid signature of the self-signing key")
	}
	return []newSignature{{userID, keyID, userID, ssk.keyID(), sig}}, nil
}

// userSignature checks a user-signing key's signature on another user's
// master key. A refused signature is an *httpx.Error.
func (s *Service) userSignature(ctx context.Context, signer, user, keyID string, raw []byte, mine map[string]crossSigningKey) ([]newSignature, error) {
	usk, ok := mine[keyUserSigning]
	if !ok {
		return nil, httpx.NotFound("No user-signing key is uploaded")
	}
	if !s.isLocal(user) {
		return nil, httpx.NotFound("The keys of users of other servers are not known here yet")
	}
	theirs, err := s.crossSigningKeys(ctx, user)
	if err != nil {
		return nil, err
	}
	master, ok := theirs[keyMaster]
	if !ok || keyID != master.pub {
		return nil, httpx.NotFound("Only master keys of other users can be signed")
	}
	if !sameSignedContent(raw, master.raw) {
		return nil, httpx.InvalidParam("The signed object is not %s's master key", user)
	}
	sig, ok := signedBy(raw, signer)[usk.keyID()]
	if !ok || !verifyWith(raw, signer, usk.keyID(), usk.pub) {
		return nil, invalidSignature("No valid signature of the user-signing key")
	}
	return []newSignature{{user, keyID, signer, usk.keyID(), sig}}, nil
}

// storeSignatures stores checked signatures. Signatures on the uploader's
// own keys change what everyone sees of their devices: that is a
// device-list change.
func (s *Service) storeSignatures(ctx context.Context, uploader string, sigs []newSignature) error {
	var pos int64
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		own := false
		for _, n := range sigs {
			if _, err := tx.Exec(ctx, `INSERT INTO e2ee_key_signatures (user_id, key_id, signer_user_id, signer_key_id, signature)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (user_id, key_id, signer_user_id, signer_key_id) DO UPDATE SET signature = excluded.signature`,
				n.user, n.keyID, n.signer, n.signerKey, n.sig); err != nil {
				return err
			}
			own = own || n.user == uploader
		}
		if !own {
			return nil
		}
		var err error
		pos, err = recordDeviceListChange(ctx, tx, uploader, "")
		return err
	})
	if err == nil && pos != 0 {
		s.afterDeviceListChange(ctx, uploader, "", pos)
	}
	return err
}
