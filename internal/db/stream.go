package db

import "context"

// NextStreamPos takes the next position of the global stream inside tx.
// Every durable item a client syncs — events, account data, receipts,
// presence, to-device messages, device-list changes — takes its position
// from this one counter, so a sync token is one number. The row lock the
// UPDATE takes is held until tx commits, so concurrent writers commit in
// position order and a reader that sees position N has seen everything
// before it.
func NextStreamPos(ctx context.Context, tx *Tx) (int64, error) {
	var pos int64
	err := tx.QueryRow(ctx, `UPDATE stream_position SET pos = pos + 1 WHERE id = 1 RETURNING pos`).Scan(&pos)
	return pos, err
}

// CurrentStreamPos is the latest committed stream position.
func (d *DB) CurrentStreamPos(ctx context.Context) (int64, error) {
	var pos int64
	err := d.r.QueryRowContext(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&pos)
	return pos, err
}
