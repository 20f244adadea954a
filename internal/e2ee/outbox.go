package e2ee

import "context"

// RemoteToDeviceDestinations lists the servers with to-device messages
// waiting in the outbox, so that the federation sender resumes them when
// the server starts.
func (s *Service) RemoteToDeviceDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT destination FROM e2ee_to_device_outbox`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}
