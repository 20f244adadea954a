package accounts

import "github.com/palpo-go/palpo/internal/httpx"

// TODO(skeleton): endpoints being written.
func (s *Service) registerRoutes(rt *httpx.Router) {}
