package sync

import "context"

// Unread notification counts in /sync. The push domain computes them; it
// plugs in through Service.UnreadCounts and lowers them when receipts are
// stored through Service.ReceiptStored.

// UnreadCounts are the unread notification counts of a room or a thread.
type UnreadCounts struct {
	NotificationCount int64 `json:"notification_count"`
	HighlightCount    int64 `json:"highlight_count"`
}

// unreadCounts loads the user's counts by room and thread for a response;
// nil when no push domain is wired.
func (s *Service) unreadCounts(ctx context.Context, rq *Request) (map[string]map[string]UnreadCounts, error) {
	if s.UnreadCounts == nil {
		return nil, nil
	}
	return s.UnreadCounts(ctx, rq.UserID, rq.To)
}

// perThreadCounts reports whether the filter asks for per-thread counts.
func perThreadCounts(rq *Request) bool {
	f := rq.Filter
	return f != nil && f.Room != nil && f.Room.Timeline != nil && f.Room.Timeline.UnreadThreadNotifications
}

// setUnread fills a joined room's counts from its counts by thread ("main"
// is the main timeline). With per-thread counts, unread_notifications has
// the main timeline's and unread_thread_notifications each thread with
// any; otherwise unread_notifications has the whole room's.
func (s *Service) setUnread(jr *JoinedRoom, byThread map[string]UnreadCounts, perThread bool) {
	if s.UnreadCounts == nil {
		return
	}
	var total UnreadCounts
	for thread, c := range byThread {
		if perThread && thread != "main" {
			if c.NotificationCount > 0 || c.HighlightCount > 0 {
				if jr.UnreadThreadNotifications == nil {
					jr.UnreadThreadNotifications = map[string]UnreadCounts{}
				}
				jr.UnreadThreadNotifications[thread] = c
			}
			continue
		}
		total.NotificationCount += c.NotificationCount
		total.HighlightCount += c.HighlightCount
	}
	jr.UnreadNotifications = &total
}
