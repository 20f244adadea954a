// Package federation implements the server-server API: the server's signing
// keys, the key ring of other servers' keys, inbound federation routes and
// outbound senders.
package federation

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SigningKey is the server's ed25519 signing key.
type SigningKey struct {
	ID      string // "ed25519:abc123"
	Private ed25519.PrivateKey
}

// Public returns the public half.
func (k *SigningKey) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// LoadOrCreateSigningKey reads the key file at path, or creates it with a
// new random key. The file holds one line in the format Synapse and Dendrite
// use: "ed25519 <key id> <unpadded base64 seed>", so keys can be moved
// between servers. created reports whether a new key was made.
func LoadOrCreateSigningKey(path string) (key *SigningKey, created bool, err error) {
	raw, err := os.ReadFile(path)
	if err == nil {
		key, err := parseSigningKey(string(raw))
		if err != nil {
			return nil, false, fmt.Errorf("signing key %s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, err
	}
	idBytes := make([]byte, 4)
	if _, err := rand.Read(idBytes); err != nil {
		return nil, false, err
	}
	version := strings.ReplaceAll(base64.RawURLEncoding.EncodeToString(idBytes), "-", "_")
	key = &SigningKey{ID: "ed25519:" + version, Private: priv}
	line := fmt.Sprintf("ed25519 %s %s\n", version, base64.RawStdEncoding.EncodeToString(priv.Seed()))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(line), 0o600); err != nil {
		return nil, false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

func parseSigningKey(s string) (*SigningKey, error) {
	fields := strings.Fields(s)
	if len(fields) != 3 || fields[0] != "ed25519" {
		return nil, errors.New(`expected "ed25519 <id> <base64 seed>"`)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("bad key seed")
	}
	return &SigningKey{ID: "ed25519:" + fields[1], Private: ed25519.NewKeyFromSeed(seed)}, nil
}

// OldKeysFile is the file in the data directory listing the server's
// retired signing keys, published as old_verify_keys so that other servers
// can still check what they signed.
const OldKeysFile = "old_signing_keys"

// OldVerifyKey is a public key the server used to sign with.
type OldVerifyKey struct {
	ID        string // "ed25519:abc123"
	Public    ed25519.PublicKey
	ExpiredTS int64 // when it stopped being used, in milliseconds since the epoch
}

// LoadOldVerifyKeys reads the retired keys at path. Each line holds
// "<key id> <unpadded base64 public key> <expired_ts in ms>"; blank lines and
// lines starting with # are ignored. A missing file means no old keys.
//
// To rotate: append the current key's ID, public key and the time of the
// switch to the file, then replace signing.key with a new key.
func LoadOldVerifyKeys(path string) ([]OldVerifyKey, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []OldVerifyKey
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := parseOldKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parseOldKey(line string) (OldVerifyKey, error) {
	fields := strings.Fields(line)
	if len(fields) != 3 {
		return OldVerifyKey{}, errors.New(`expected "<key id> <base64 public key> <expired_ts>"`)
	}
	if !ValidKeyID(fields[0]) {
		return OldVerifyKey{}, fmt.Errorf("bad key ID %q (want ed25519:<letters, digits, _>)", fields[0])
	}
	pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[1], "="))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return OldVerifyKey{}, errors.New("bad public key")
	}
	ts, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil || ts <= 0 {
		return OldVerifyKey{}, fmt.Errorf("bad expired_ts %q", fields[2])
	}
	return OldVerifyKey{ID: fields[0], Public: pub, ExpiredTS: ts}, nil
}

// ValidKeyID reports whether id is an ed25519 key ID whose version matches
// [a-zA-Z0-9_]+, as the spec requires.
func ValidKeyID(id string) bool {
	version, ok := strings.CutPrefix(id, "ed25519:")
	if !ok || version == "" {
		return false
	}
	for _, r := range version {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}
