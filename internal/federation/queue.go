package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/palpo-go/palpo/internal/db"
)

// The durable per-destination queue (federation_queue): rows are added in
// the transaction that also advances the sender's stream position (or by
// QueuePDUs and QueueEDU), read in id order per destination, and deleted
// only after the destination acknowledged the transaction that carried
// them.

// Queue row kinds.
const (
	kindPDU = 0
	kindEDU = 1
)

// queued is a row to add to the queue.
type queued struct {
	destination string
	kind        int
	eventID     string
	edu         []byte
}

// insertQueued adds rows in a transaction.
func insertQueued(ctx context.Context, tx *db.Tx, rows []queued) error {
	for _, q := range rows {
		var eventID, eduJSON any
		if q.kind == kindPDU {
			eventID = q.eventID
		} else {
			eduJSON = string(q.edu)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO federation_queue (destination, kind, event_id, edu_json) VALUES ($1, $2, $3, $4)`,
			q.destination, q.kind, eventID, eduJSON); err != nil {
			return fmt.Errorf("queue: %w", err)
		}
	}
	return nil
}

// queuedPDU and queuedEDU are rows read for a transaction.
type queuedPDU struct {
	id      int64
	eventID string
}

type queuedEDU struct {
	id  int64
	edu json.RawMessage
}

// loadQueued reads the oldest PDU and EDU rows of a destination, up to the
// transaction limits.
func (s *Sender) loadQueued(ctx context.Context, dest string) ([]queuedPDU, []queuedEDU, error) {
	var pdus []queuedPDU
	rows, err := s.db.Query(ctx, `SELECT id, event_id FROM federation_queue WHERE destination = $1 AND kind = $2 ORDER BY id LIMIT $3`,
		dest, kindPDU, maxTxnPDUs)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var q queuedPDU
		if err := rows.Scan(&q.id, &q.eventID); err != nil {
			rows.Close()
			return nil, nil, err
		}
		pdus = append(pdus, q)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	var edus []queuedEDU
	rows, err = s.db.Query(ctx, `SELECT id, edu_json FROM federation_queue WHERE destination = $1 AND kind = $2 ORDER BY id LIMIT $3`,
		dest, kindEDU, maxTxnEDUs)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var q queuedEDU
		var raw string
		if err := rows.Scan(&q.id, &raw); err != nil {
			return nil, nil, err
		}
		q.edu = json.RawMessage(raw)
		edus = append(edus, q)
	}
	return pdus, edus, rows.Err()
}

// deleteQueued removes rows once their transaction was acknowledged.
func (s *Sender) deleteQueued(ctx context.Context, ids []int64) error {
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 500)]
		ids = ids[len(batch):]
		args := make([]any, len(batch))
		ph := make([]string, len(batch))
		for i, id := range batch {
			args[i] = id
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		if _, err := s.db.Exec(ctx, `DELETE FROM federation_queue WHERE id IN (`+strings.Join(ph, ",")+`)`, args...); err != nil {
			return err
		}
	}
	return nil
}

// queuedDestinations lists the destinations with queued rows (to resume
// them after a restart).
func (s *Sender) queuedDestinations(ctx context.Context) (map[string]bool, error) {
	return s.db.QueryStringSet(ctx, `SELECT DISTINCT destination FROM federation_queue`)
}

// QueuePDUs queues stored events for destinations (durably, in the order
// given) and wakes their senders. This server and duplicate destinations
// are skipped. The membership flows use it for events that the stream does
// not carry to every server that needs them.
func (s *Sender) QueuePDUs(ctx context.Context, destinations []string, eventIDs ...string) error {
	var rows []queued
	for _, d := range s.others(destinations) {
		for _, id := range eventIDs {
			rows = append(rows, queued{destination: d, kind: kindPDU, eventID: id})
		}
	}
	return s.queue(ctx, rows)
}

// QueueEDU queues an EDU for destinations (durably) and wakes their
// senders: for EDUs that must not be lost (device list updates, to-device
// messages). This server and duplicate destinations are skipped.
func (s *Sender) QueueEDU(ctx context.Context, destinations []string, eduType string, content any) error {
	raw, err := json.Marshal(map[string]any{"edu_type": eduType, "content": content})
	if err != nil {
		return err
	}
	var rows []queued
	for _, d := range s.others(destinations) {
		rows = append(rows, queued{destination: d, kind: kindEDU, edu: raw})
	}
	return s.queue(ctx, rows)
}

// queue stores rows and wakes their destinations.
func (s *Sender) queue(ctx context.Context, rows []queued) error {
	if len(rows) == 0 {
		return nil
	}
	if err := s.db.WriteTx(ctx, func(tx *db.Tx) error { return insertQueued(ctx, tx, rows) }); err != nil {
		return err
	}
	for _, q := range rows {
		s.wake(q.destination)
	}
	return nil
}

// others returns the valid destinations without this server and
// duplicates.
func (s *Sender) others(destinations []string) []string {
	seen := map[string]bool{s.svc.serverName: true}
	var out []string
	for _, d := range destinations {
		if !seen[d] && validDestination(d) {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// validDestination reports whether a server name can be sent to: a user
// ID's server part is not checked by the auth rules, and rows for a name
// that can never be reached would wait forever.
func validDestination(name string) bool {
	_, _, err := splitServerName(name)
	return name != "" && err == nil
}
