package accounts

import (
	"context"
	"encoding/json"
)

// LocalProfile returns every field of a local user's profile, keyed by
// name, as federation's /query/profile answers it. An unknown user is 404
// M_NOT_FOUND.
func (s *Service) LocalProfile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	row, err := s.readProfile(ctx, s.db, userID)
	if err != nil {
		return nil, err
	}
	return row.fieldMap()
}
