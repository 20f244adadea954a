package server

import "github.com/palpo-go/palpo/internal/httpx"

// Routes lists every route registered on the server's router, for the
// tests of this package (which start servers through testutil).
func (s *Server) Routes() []httpx.Route { return s.router.Routes() }
