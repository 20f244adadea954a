package accounts

import (
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Device management (client-server spec, "Device management").

func (s *Service) deviceRoutes(rt *httpx.Router) {
	rt.AuthedGuestOK("GET /_matrix/client/v3/devices", s.getDevices)
	rt.AuthedGuestOK("GET /_matrix/client/v3/devices/{deviceId}", s.getDevice)
	rt.AuthedGuestOK("PUT /_matrix/client/v3/devices/{deviceId}", s.putDevice)
	rt.Authed("DELETE /_matrix/client/v3/devices/{deviceId}", s.deleteDevice)
	rt.Authed("POST /_matrix/client/v3/delete_devices", s.postDeleteDevices)
}

// clientDevice is a device as the client API shows it.
type clientDevice struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	LastSeenIP  *string `json:"last_seen_ip,omitempty"`
	LastSeenTS  *int64  `json:"last_seen_ts,omitempty"`
}

func toClientDevice(d *Device) clientDevice {
	return clientDevice{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS}
}

func (s *Service) getDevices(r *http.Request, p *httpx.Principal) (any, error) {
	devices, err := s.ListDevices(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	out := make([]clientDevice, len(devices))
	for i := range devices {
		out[i] = toClientDevice(&devices[i])
	}
	return map[string]any{"devices": out}, nil
}

func (s *Service) getDevice(r *http.Request, p *httpx.Principal) (any, error) {
	d, err := s.GetDevice(r.Context(), p.UserID, r.PathValue("deviceId"))
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, errNoDevice
	}
	return toClientDevice(d), nil
}

var errNoDevice = httpx.NotFound("No such device")

// putDevice updates a device's display name. Creating devices this way is
// for application services only (spec v1.17), which do not exist yet: an
// unknown device is 404.
func (s *Service) putDevice(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	ctx, deviceID := r.Context(), r.PathValue("deviceId")
	if req.DisplayName == nil {
		d, err := s.GetDevice(ctx, p.UserID, deviceID)
		if err != nil {
			return nil, err
		}
		if d == nil {
			return nil, errNoDevice
		}
		return httpx.Empty, nil
	}
	if utf8.RuneCountInString(*req.DisplayName) > maxDeviceNameLen {
		return nil, httpx.InvalidParam("display_name is longer than %d characters", maxDeviceNameLen)
	}
	if err := checkDeviceText("", *req.DisplayName); err != nil {
		return nil, err
	}
	ok, err := s.SetDeviceDisplayName(ctx, p.UserID, deviceID, *req.DisplayName)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errNoDevice
	}
	return httpx.Empty, nil
}

// deleteDevice deletes one device after the account's password is
// confirmed. Deleting a device that does not exist succeeds: the spec
// answers 200 for a device "removed previously".
func (s *Service) deleteDevice(r *http.Request, p *httpx.Principal) (any, error) {
	// The body is optional: older clients send none on the first round.
	var req struct {
		Auth *AuthDict `json:"auth"`
	}
	if err := httpx.DecodeOptionalJSON(r, &req); err != nil {
		return nil, err
	}
	if err := s.requirePassword(r.Context(), p.UserID, req.Auth); err != nil {
		return nil, err
	}
	if err := s.DeleteDevices(r.Context(), p.UserID, []string{r.PathValue("deviceId")}, ""); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// postDeleteDevices deletes several devices after the account's password is
// confirmed.
func (s *Service) postDeleteDevices(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		Devices *[]string `json:"devices"`
		Auth    *AuthDict `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Devices == nil {
		return nil, httpx.MissingParam("Missing devices")
	}
	if err := s.requirePassword(r.Context(), p.UserID, req.Auth); err != nil {
		return nil, err
	}
	// An empty list deletes nothing (DeleteDevices reads nil as "all").
	if len(*req.Devices) > 0 {
		if err := s.DeleteDevices(r.Context(), p.UserID, *req.Devices, ""); err != nil {
			return nil, err
		}
	}
	return httpx.Empty, nil
}

// checkDeviceText refuses a client-chosen device ID or device display name
// holding a NUL character: PostgreSQL cannot store one (the request would
// fail as a 500) and no client needs it.
func checkDeviceText(deviceID, displayName string) error {
	if strings.ContainsRune(deviceID, 0) {
		return httpx.InvalidParam("device_id must not contain NUL characters")
	}
	if strings.ContainsRune(displayName, 0) {
		return httpx.InvalidParam("The device display name must not contain NUL characters")
	}
	return nil
}
