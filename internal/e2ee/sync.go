package e2ee

import (
	"context"

	"github.com/palpo-go/palpo/internal/sync"
)

// syncExtension fills the E2EE parts of a /sync response (client-server
// spec, "Extensions to /sync" of E2EE and of send-to-device): to-device
// messages, device-list changes (incremental syncs only), one-time key
// counts and unused fallback key types.
func (s *Service) syncExtension(ctx context.Context, rq *sync.Request, resp *sync.Response) error {
	evs, err := s.syncToDevice(ctx, rq)
	if err != nil {
		return err
	}
	if len(evs) > 0 {
		resp.ToDevice = &sync.EventList{Events: evs}
	}
	if !rq.Initial {
		changed, left, err := s.deviceListChanges(ctx, rq.UserID, rq.Since.Pos, rq.To)
		if err != nil {
			return err
		}
		if len(changed) > 0 || len(left) > 0 {
			resp.DeviceLists = &sync.DeviceLists{Changed: changed, Left: left}
		}
	}
	if resp.DeviceOneTimeKeysCount, err = s.oneTimeKeyCounts(ctx, rq.UserID, rq.DeviceID); err != nil {
		return err
	}
	resp.DeviceUnusedFallback, err = s.unusedFallbackKeyTypes(ctx, rq.UserID, rq.DeviceID)
	return err
}
