package rooms

import "github.com/palpo-go/palpo/internal/httpx"

// TODO(skeleton): endpoints being written.
func (e *Engine) readRoutes(rt *httpx.Router) {}
