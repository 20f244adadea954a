package config

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// TrustedKeyServer is a notary named in federation.trusted_key_servers.
type TrustedKeyServer struct {
	ServerName string
	// Keys are the pinned public keys of the notary (key ID → ed25519 key).
	// Empty: the notary's keys are fetched from it directly.
	Keys map[string][]byte
}

// TrustedKeyServers parses Federation.TrustedKeyServers: comma-separated
// entries "name" or "name=ed25519:<version>:<unpadded base64 key>"; a
// notary with several keys is listed once per key.
func (c *Config) TrustedKeyServers() ([]TrustedKeyServer, error) {
	var out []TrustedKeyServer
	index := map[string]int{}
	for _, part := range strings.Split(c.Federation.TrustedKeyServers, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, key, hasKey := strings.Cut(part, "=")
		if err := ValidateServerName(name); err != nil {
			return nil, fmt.Errorf("%q: %v", part, err)
		}
		i, ok := index[name]
		if !ok {
			i = len(out)
			index[name] = i
			out = append(out, TrustedKeyServer{ServerName: name, Keys: map[string][]byte{}})
		}
		if !hasKey {
			continue
		}
		sep := strings.LastIndexByte(key, ':')
		id, b64 := key[:max(sep, 0)], key[sep+1:]
		version, isEd25519 := strings.CutPrefix(id, "ed25519:")
		if sep < 0 || !isEd25519 || version == "" || strings.Trim(version, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			return nil, fmt.Errorf("%q: expected name=ed25519:<version>:<base64 key>", part)
		}
		pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(b64, "="))
		if err != nil || len(pub) != 32 {
			return nil, fmt.Errorf("%q: the key is not an unpadded base64 ed25519 public key", part)
		}
		out[i].Keys[id] = pub
	}
	return out, nil
}
