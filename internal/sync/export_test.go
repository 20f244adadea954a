package sync

import (
	"context"
	"time"
)

// ExpirePresence runs one round of the presence timer as if it were now.
func (s *Service) ExpirePresence(ctx context.Context, now time.Time) { s.expirePresence(ctx, now) }
