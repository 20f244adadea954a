package push

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	syncapi "github.com/palpo-go/palpo/internal/sync"
)

// Unread counts. push_counts holds, per user, room and thread ("main" or
// the thread root), the numbers of notifying and highlighting events after
// the user's read position; push_read holds the read positions (the stream
// positions of the events receipts point at; thread "" is an unthreaded
// receipt, which covers every thread). The evaluator adds to the counters,
// receipts recount them from push_notifications.

// countsWait bounds how long /sync waits for the evaluator to cover its
// stream position before it reads the counters.
const countsWait = 2 * time.Second

type countKey struct{ user, room, thread string }

type readKey struct{ room, user, thread string }

// delta is a change to one counter; reset replaces it instead of adding.
type delta struct {
	reset bool
	n, h  int64
}

// commitResults writes a batch's notifications, counters and implicit
// read positions and advances the evaluator's position, in one
// transaction.
func (s *Service) commitResults(ctx context.Context, results []*eventResult, newPos int64) error {
	roomSet := map[string]bool{}
	var roomList []string
	for _, r := range results {
		if (r.sender != "" || len(r.notifs) > 0 || r.left != "") && !roomSet[r.roomID] {
			roomSet[r.roomID] = true
			roomList = append(roomList, r.roomID)
		}
	}
	return s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if err := lockRooms(ctx, tx, roomList); err != nil {
			return err
		}
		reads, err := loadReads(ctx, tx, roomList)
		if err != nil {
			return err
		}
		deltas := map[countKey]*delta{}
		readUps := map[readKey]int64{}
		type userRoom struct{ user, room string }
		var clears []userRoom
		var rows []any
		for _, r := range results {
			if r.sender != "" {
				// Sending an event marks the sender's thread read up to it.
				k := readKey{r.roomID, r.sender, r.thread}
				if r.pos > reads[k] {
					reads[k], readUps[k] = r.pos, r.pos
				}
				deltas[countKey{r.sender, r.roomID, r.thread}] = &delta{reset: true}
			}
			for _, n := range r.notifs {
				rows = append(rows, n.user, r.pos, r.roomID, r.thread, n.highlight, n.actions)
				if r.pos <= effectiveRead(reads, r.roomID, n.user, r.thread) {
					continue
				}
				k := countKey{n.user, r.roomID, r.thread}
				d := deltas[k]
				if d == nil {
					d = &delta{}
					deltas[k] = d
				}
				d.n++
				if n.highlight {
					d.h++
				}
			}
			if r.left != "" {
				// A user who left has no unread counts in the room.
				clears = append(clears, userRoom{r.left, r.roomID})
				for k := range deltas {
					if k.user == r.left && k.room == r.roomID {
						delete(deltas, k)
					}
				}
				for k := range reads {
					if k.user == r.left && k.room == r.roomID {
						delete(reads, k)
						delete(readUps, k)
					}
				}
			}
		}
		for _, c := range clears {
			if _, err := tx.Exec(ctx, `DELETE FROM push_counts WHERE user_id = $1 AND room_id = $2`, c.user, c.room); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM push_read WHERE room_id = $1 AND user_id = $2`, c.room, c.user); err != nil {
				return err
			}
		}
		if err := insertNotifications(ctx, tx, rows); err != nil {
			return err
		}
		if err := applyDeltas(ctx, tx, deltas); err != nil {
			return err
		}
		for k, pos := range readUps {
			if err := raiseRead(ctx, tx, k, pos); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE push_position SET pos = $1 WHERE id = 1`, newPos)
		return err
	})
}

// notifCols is the number of columns insertNotifications writes per row.
const notifCols = 6

// insertNotifications writes notification rows (flattened, notifCols
// values each) in multi-row statements.
func insertNotifications(ctx context.Context, tx *db.Tx, vals []any) error {
	const chunk = 500 * notifCols
	for len(vals) > 0 {
		n := min(len(vals), chunk)
		q := `INSERT INTO push_notifications (user_id, stream_pos, room_id, thread_id, highlight, actions) VALUES ` +
			placeholders(tx.Dialect(), n/notifCols, notifCols) + ` ON CONFLICT (user_id, stream_pos) DO NOTHING`
		if _, err := tx.Exec(ctx, q, vals[:n]...); err != nil {
			return fmt.Errorf("insert notifications: %w", err)
		}
		vals = vals[n:]
	}
	return nil
}

// applyDeltas writes counter changes: additions in multi-row upserts,
// resets one by one (an empty counter row is deleted).
func applyDeltas(ctx context.Context, tx *db.Tx, deltas map[countKey]*delta) error {
	var adds []any
	for k, d := range deltas {
		switch {
		case !d.reset:
			adds = append(adds, k.user, k.room, k.thread, d.n, d.h)
		case d.n == 0 && d.h == 0:
			if _, err := tx.Exec(ctx, `DELETE FROM push_counts WHERE user_id = $1 AND room_id = $2 AND thread_id = $3`, k.user, k.room, k.thread); err != nil {
				return err
			}
		default:
			if err := setCount(ctx, tx, k, d.n, d.h); err != nil {
				return err
			}
		}
	}
	const chunk = 500 * 5
	for len(adds) > 0 {
		n := min(len(adds), chunk)
		q := `INSERT INTO push_counts (user_id, room_id, thread_id, notifs, highlights) VALUES ` + placeholders(tx.Dialect(), n/5, 5) +
			` ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET notifs = push_counts.notifs + excluded.notifs, highlights = push_counts.highlights + excluded.highlights`
		if _, err := tx.Exec(ctx, q, adds[:n]...); err != nil {
			return fmt.Errorf("update counts: %w", err)
		}
		adds = adds[n:]
	}
	return nil
}

// setCount replaces a counter.
func setCount(ctx context.Context, tx *db.Tx, k countKey, n, h int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO push_counts (user_id, room_id, thread_id, notifs, highlights) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET notifs = excluded.notifs, highlights = excluded.highlights`,
		k.user, k.room, k.thread, n, h)
	return err
}

// raiseRead moves a read position forward (never back).
func raiseRead(ctx context.Context, tx *db.Tx, k readKey, pos int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO push_read (room_id, user_id, thread_id, stream_pos) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_id, user_id, thread_id) DO UPDATE SET stream_pos = excluded.stream_pos WHERE excluded.stream_pos > push_read.stream_pos`,
		k.room, k.user, k.thread, pos)
	return err
}

// loadReads reads the read positions of every user in the rooms.
func loadReads(ctx context.Context, tx *db.Tx, roomIDs []string) (map[readKey]int64, error) {
	out := map[readKey]int64{}
	for _, roomID := range roomIDs {
		rows, err := tx.Query(ctx, `SELECT user_id, thread_id, stream_pos FROM push_read WHERE room_id = $1`, roomID)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			k := readKey{room: roomID}
			var pos int64
			if err := rows.Scan(&k.user, &k.thread, &pos); err != nil {
				rows.Close()
				return nil, err
			}
			out[k] = pos
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// effectiveRead is the position a user has read a thread up to: the later
// of their receipt in the thread and their unthreaded receipt.
func effectiveRead(reads map[readKey]int64, room, user, thread string) int64 {
	return max(reads[readKey{room, user, thread}], reads[readKey{room, user, ""}])
}

// OnReceipt lowers the user's notification counts after a read receipt
// (m.read or m.read.private). The sync service calls it inside the
// transaction that stores the receipt; the function it returns sends the
// lowered badge to the user's pushers once that transaction committed.
func (s *Service) OnReceipt(ctx context.Context, tx *db.Tx, rc syncapi.Receipt) (func(), error) {
	if (rc.Type != syncapi.ReceiptRead && rc.Type != syncapi.ReceiptReadPrivate) || !s.isLocal(rc.UserID) {
		return nil, nil
	}
	var pos int64
	err := tx.QueryRow(ctx, `SELECT stream_pos FROM events WHERE event_id = $1 AND room_id = $2`, rc.EventID, rc.RoomID).Scan(&pos)
	if errors.Is(err, db.ErrNoRows) || (err == nil && pos <= 0) {
		return nil, nil // not a timeline event: nothing to mark
	}
	if err != nil {
		return nil, err
	}
	if err := lockRooms(ctx, tx, []string{rc.RoomID}); err != nil {
		return nil, err
	}
	if err := raiseRead(ctx, tx, readKey{rc.RoomID, rc.UserID, rc.ThreadID}, pos); err != nil {
		return nil, err
	}
	changed, err := recount(ctx, tx, rc.UserID, rc.RoomID)
	if err != nil || !changed {
		return nil, err
	}
	return func() { s.gateway.badge(rc.UserID) }, nil
}

// recount recomputes a user's counters in a room from the notifications
// after their read positions, and reports whether any changed. Only
// existing counters can go down.
func recount(ctx context.Context, tx *db.Tx, userID, roomID string) (bool, error) {
	reads, err := loadUserReads(ctx, tx, userID, roomID)
	if err != nil {
		return false, err
	}
	rows, err := tx.Query(ctx, `SELECT thread_id, notifs, highlights FROM push_counts WHERE user_id = $1 AND room_id = $2`, userID, roomID)
	if err != nil {
		return false, err
	}
	type counter struct {
		thread string
		n, h   int64
	}
	var counters []counter
	for rows.Next() {
		var c counter
		if err := rows.Scan(&c.thread, &c.n, &c.h); err != nil {
			rows.Close()
			return false, err
		}
		counters = append(counters, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}
	changed := false
	for _, c := range counters {
		from := max(reads[c.thread], reads[""])
		var n, h int64
		if err := tx.QueryRow(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN highlight THEN 1 ELSE 0 END), 0) FROM push_notifications
			WHERE user_id = $1 AND stream_pos > $2 AND room_id = $3 AND thread_id = $4`, userID, from, roomID, c.thread).Scan(&n, &h); err != nil {
			return false, err
		}
		if n == c.n && h == c.h {
			continue
		}
		changed = true
		k := countKey{userID, roomID, c.thread}
		if err := applyDeltas(ctx, tx, map[countKey]*delta{k: {reset: true, n: n, h: h}}); err != nil {
			return false, err
		}
	}
	return changed, nil
}

// querier is what reading a few rows needs: the database or a
// transaction.
type querier interface {
	Query(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// loadUserReads reads one user's read positions in a room by thread.
func loadUserReads(ctx context.Context, q querier, userID, roomID string) (map[string]int64, error) {
	rows, err := q.Query(ctx, `SELECT thread_id, stream_pos FROM push_read WHERE room_id = $1 AND user_id = $2`, roomID, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var thread string
		var pos int64
		if err := rows.Scan(&thread, &pos); err != nil {
			return nil, err
		}
		out[thread] = pos
	}
	return out, rows.Err()
}

// UnreadCounts returns a user's unread notification counts by room and
// thread ("main" for the main timeline). It first waits, briefly, for the
// evaluator to cover stream position upTo, so that a /sync response shows
// the counts of the events it carries. The sync service calls it.
func (s *Service) UnreadCounts(ctx context.Context, userID string, upTo int64) (map[string]map[string]syncapi.UnreadCounts, error) {
	s.waitCovered(ctx, upTo, countsWait)
	rows, err := s.db.Query(ctx, `SELECT room_id, thread_id, notifs, highlights FROM push_counts WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("unread counts: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]syncapi.UnreadCounts{}
	for rows.Next() {
		var room, thread string
		var c syncapi.UnreadCounts
		if err := rows.Scan(&room, &thread, &c.NotificationCount, &c.HighlightCount); err != nil {
			return nil, err
		}
		if out[room] == nil {
			out[room] = map[string]syncapi.UnreadCounts{}
		}
		out[room][thread] = c
	}
	return out, rows.Err()
}

// totalUnread is the badge count of a user: unread notifications across
// their rooms.
func (s *Service) totalUnread(ctx context.Context, userID string) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COALESCE(SUM(notifs), 0) FROM push_counts WHERE user_id = $1`, userID).Scan(&n)
	return n, err
}
