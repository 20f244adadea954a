// Package e2e holds Palpo's end-to-end tests: scenarios driven by
// mautrix-go, a real Matrix client library, against real Palpo servers
// started in-process by internal/testutil on SQLite and, when
// PALPO_TEST_POSTGRES is set, PostgreSQL. Every assertion is on what a
// client observes: responses, errors and events delivered by /sync.
//
// Run them with the rest of the tests: go test -tags goolm ./... (the tag
// selects mautrix-go's pure-Go Olm for the encrypted scenarios; the others
// run without it too).
package e2e
