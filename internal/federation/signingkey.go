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
