package rooms

import "crypto/ed25519"

// SigningKey is the key the engine signs local events with: the server's
// ed25519 signing key. It has the layout of federation.SigningKey, so a
// *federation.SigningKey converts to it; the room engine does not import
// the federation package, which builds on it (transactions, joins,
// backfill).
type SigningKey struct {
	ID      string // "ed25519:abc123"
	Private ed25519.PrivateKey
}
