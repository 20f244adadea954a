package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// This file holds the checks on signed JSON objects and the identifiers
// they carry (appendices: "Signing JSON", "Unpadded Base64").

// maxIDLen bounds user, device and key identifiers.
const maxIDLen = 255

// signatures is the "signatures" member of a signed object: user ID → key
// ID ("ed25519:…") → unpadded base64 signature.
type signatures map[string]map[string]string

// validUserID reports whether id is a user ID the server can store.
func validUserID(id string) bool {
	if len(id) > maxIDLen || strings.ContainsRune(id, 0) {
		return false
	}
	_, err := spec.NewUserID(id, true)
	return err == nil
}

// serverOf is the server name of a valid user ID.
func serverOf(userID string) string {
	_, server, _ := strings.Cut(userID, ":")
	return server
}

// validText reports whether s is a non-empty identifier without NUL
// characters (PostgreSQL cannot store them) and not over-long.
func validText(s string) bool {
	return s != "" && len(s) <= maxIDLen && !strings.ContainsRune(s, 0)
}

// decodeBase64 reads unpadded (or padded) standard base64.
func decodeBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// parseEd25519 reads an unpadded base64 ed25519 public key.
func parseEd25519(s string) (ed25519.PublicKey, bool) {
	b, err := decodeBase64(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, false
	}
	return ed25519.PublicKey(b), true
}

// verifySigned checks the signature of signer's key keyID ("ed25519:…")
// on the signed object raw.
func verifySigned(raw []byte, signer, keyID string, pub ed25519.PublicKey) bool {
	return gomatrixserverlib.VerifyJSON(signer, gomatrixserverlib.KeyID(keyID), pub, raw) == nil
}

// signedContent is the canonical JSON of a signed object without its
// signatures and unsigned members: what the signatures cover, and what two
// uploads of the same key must agree on.
func signedContent(raw []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "signatures")
	delete(obj, "unsigned")
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(b)
}

// sameSignedContent reports whether two signed objects are the same key.
func sameSignedContent(a, b []byte) bool {
	ca, err1 := signedContent(a)
	cb, err2 := signedContent(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

// canonical returns the canonical JSON of raw without its unsigned member:
// the form keys are stored in.
func canonical(raw []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "unsigned")
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(b)
}

// withSignatures returns the stored object raw with extra signatures merged
// into its own and the given unsigned member (nil: none).
func withSignatures(raw []byte, extra signatures, unsigned any) json.RawMessage {
	if len(extra) == 0 && unsigned == nil {
		return raw
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw
	}
	var sigs signatures
	_ = json.Unmarshal(obj["signatures"], &sigs)
	if sigs == nil {
		sigs = signatures{}
	}
	for user, byKey := range extra {
		if sigs[user] == nil {
			sigs[user] = map[string]string{}
		}
		for k, v := range byKey {
			sigs[user][k] = v
		}
	}
	obj["signatures"] = rawJSON(sigs)
	if unsigned != nil {
		obj["unsigned"] = rawJSON(unsigned)
	}
	return rawJSON(obj)
}

// keyObject is the decoded shape shared by device keys and cross-signing
// keys.
type keyObject struct {
	UserID     string            `json:"user_id"`
	DeviceID   string            `json:"device_id"`
	Algorithms []string          `json:"algorithms"`
	Usage      []string          `json:"usage"`
	Keys       map[string]string `json:"keys"`
	Signatures signatures        `json:"signatures"`
}

// decodeKeyObject decodes a device or cross-signing key object; what names
// it in errors.
func decodeKeyObject(raw json.RawMessage, what string) (*keyObject, error) {
	var k keyObject
	if len(raw) == 0 || raw[0] != '{' {
		return nil, httpx.BadJSON("%s must be an object", what)
	}
	if err := json.Unmarshal(raw, &k); err != nil {
		return nil, httpx.BadJSON("%s is malformed: %v", what, err)
	}
	return &k, nil
}

// invalidSignature is 400 M_INVALID_SIGNATURE.
func invalidSignature(format string, a ...any) *httpx.Error {
	return httpx.NewError(400, "M_INVALID_SIGNATURE", format, a...)
}
