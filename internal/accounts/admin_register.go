package accounts

import "github.com/palpo-go/palpo/internal/httpx"

// TODO(skeleton): endpoints being written.
func (s *Service) adminRegisterRoutes(rt *httpx.Router) {}

type nonceStore struct{ m map[string]int64 }
