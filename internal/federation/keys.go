package federation

import (
	"encoding/base64"
	"encoding/json"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
)

// Publishing the server's own keys: GET /_matrix/key/v2/server.

const (
	// ownKeysValidity is the valid_until_ts offset of the published keys.
	ownKeysValidity = 7 * 24 * time.Hour
	// ownKeysRefresh is how long one signed response is served before it is
	// made again, so that valid_until_ts stays close to a week ahead.
	ownKeysRefresh = time.Hour
)

// ownKeys builds, signs and caches the server's keys response.
type ownKeys struct {
	serverName string
	key        *SigningKey
	old        []OldVerifyKey
	now        func() time.Time

	mu   sync.Mutex
	raw  []byte
	made time.Time
}

// response returns the signed keys response, made again when it is older
// than ownKeysRefresh.
func (o *ownKeys) response() ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	if o.raw != nil && now.Sub(o.made) < ownKeysRefresh {
		return o.raw, nil
	}
	type verifyKey struct {
		Key string `json:"key"`
	}
	type oldVerifyKey struct {
		Key       string `json:"key"`
		ExpiredTS int64  `json:"expired_ts"`
	}
	doc := struct {
		ServerName    string                  `json:"server_name"`
		VerifyKeys    map[string]verifyKey    `json:"verify_keys"`
		OldVerifyKeys map[string]oldVerifyKey `json:"old_verify_keys"`
		ValidUntilTS  int64                   `json:"valid_until_ts"`
	}{
		ServerName:    o.serverName,
		VerifyKeys:    map[string]verifyKey{o.key.ID: {Key: base64.RawStdEncoding.EncodeToString(o.key.Public())}},
		OldVerifyKeys: map[string]oldVerifyKey{},
		ValidUntilTS:  now.Add(ownKeysValidity).UnixMilli(),
	}
	for _, k := range o.old {
		doc.OldVerifyKeys[k.ID] = oldVerifyKey{Key: base64.RawStdEncoding.EncodeToString(k.Public), ExpiredTS: k.ExpiredTS}
	}
	unsigned, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	signed, err := o.sign(unsigned)
	if err != nil {
		return nil, err
	}
	o.raw, o.made = signed, now
	return signed, nil
}

// sign adds the server's signature to a JSON object.
func (o *ownKeys) sign(message []byte) ([]byte, error) {
	return gomatrixserverlib.SignJSON(o.serverName, gomatrixserverlib.KeyID(o.key.ID), o.key.Private, message)
}

// verifyKeys returns the server's own keys as the key ring uses them: the
// current key never needs fetching, old keys expire as published.
func (o *ownKeys) verifyKeys() []VerifyKey {
	forever := time.Unix(1<<40, 0)
	keys := []VerifyKey{{ServerName: o.serverName, KeyID: o.key.ID, Public: o.key.Public(), ValidUntil: forever}}
	for _, k := range o.old {
		keys = append(keys, VerifyKey{ServerName: o.serverName, KeyID: k.ID, Public: k.Public, Expired: time.UnixMilli(k.ExpiredTS)})
	}
	return keys
}
