package server

import (
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// specVersions are the client-server spec versions Palpo answers for.
var specVersions = []string{
	"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

// infoRoutes registers the discovery endpoints: /versions, /.well-known,
// /capabilities and /health.
func (s *Server) infoRoutes(rt *httpx.Router) {
	rt.Public("GET /_matrix/client/versions", func(r *http.Request) (any, error) {
		return map[string]any{
			"versions": specVersions,
			"unstable_features": map[string]bool{
				"org.matrix.msc3814": true, // dehydrated devices (e2ee)
			},
		}, nil
	})
	rt.Public("GET /.well-known/matrix/client", func(r *http.Request) (any, error) {
		base := s.Config.WellKnown.Client
		if base == "" {
			base = s.Config.BaseURL()
		}
		return map[string]any{"m.homeserver": map[string]string{"base_url": base}}, nil
	})
	rt.Public("GET /.well-known/matrix/server", func(r *http.Request) (any, error) {
		if s.Config.WellKnown.Server == "" {
			return nil, httpx.NotFound("No server delegation is configured")
		}
		return map[string]string{"m.server": s.Config.WellKnown.Server}, nil
	})
	capabilities := func(r *http.Request, p *httpx.Principal) (any, error) {
		versions := map[string]string{}
		for v := range gomatrixserverlib.StableRoomVersions() {
			versions[string(v)] = "stable"
		}
		return map[string]any{"capabilities": map[string]any{
			"m.room_versions":   map[string]any{"default": string(rooms.DefaultRoomVersion), "available": versions},
			"m.change_password": map[string]bool{"enabled": true},
			"m.set_displayname": map[string]bool{"enabled": true},
			"m.set_avatar_url":  map[string]bool{"enabled": true},
			"m.3pid_changes":    map[string]bool{"enabled": false},
			"m.get_login_token": map[string]bool{"enabled": false},
			"m.profile_fields":  map[string]bool{"enabled": true},
		}}, nil
	}
	rt.AuthedGuestOK("GET /_matrix/client/v3/capabilities", capabilities)
	rt.Raw("GET /health", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.DB.Raw().PingContext(r.Context()); err != nil {
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("OK"))
	}))
}
