package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// MediaConfig configures the media repository (uploads, downloads,
// thumbnails, remote media and URL previews).
type MediaConfig struct {
	MaxUploadBytes    int64         `yaml:"max_upload_bytes" doc:"Largest upload accepted, in bytes (also the largest remote file fetched and cached). Advertised as m.upload.size."`
	MaxImagePixels    int64         `yaml:"max_image_pixels" doc:"Images with more pixels (width × height, read from the file header before decoding) are not thumbnailed: decompression bombs are refused without being decoded."`
	ThumbnailSizes    string        `yaml:"thumbnail_sizes" doc:"Thumbnails generated when an image is uploaded, as comma-separated WIDTHxHEIGHT-METHOD (method crop or scale). Other sizes are generated on request and cached. Empty: none in advance."`
	LegacyFreeze      string        `yaml:"legacy_freeze" doc:"Freeze of the deprecated unauthenticated downloads (/_matrix/media/v3/download and /thumbnail): on (they serve no media, 404 M_NOT_FOUND, as Synapse does with enable_authenticated_media), off (they serve all media), or a date (2024-09-01 or RFC 3339) before which stored media stays reachable without authentication."`
	UnusedExpiry      time.Duration `yaml:"unused_expiry" doc:"How long a media ID made with POST /_matrix/media/v1/create waits for its upload before it expires."`
	MaxPendingUploads int           `yaml:"max_pending_uploads" doc:"Media IDs made with /create that a user may have waiting for their upload at once (more: 429 M_LIMIT_EXCEEDED)."`
	RemoteRetention   time.Duration `yaml:"remote_retention" doc:"Cached remote media not downloaded for this long is deleted (it is fetched again when asked for). 0: kept until an admin purges it."`
	LocalRetention    time.Duration `yaml:"local_retention" doc:"Local media not downloaded for this long is deleted for good. 0: kept forever."`

	URLPreviews        bool   `yaml:"url_previews" doc:"Serve URL previews (GET /_matrix/client/v1/media/preview_url). Off by default: the server would fetch any URL its users post. When on, previews never reach loopback, private or link-local addresses unless url_preview_allow_ranges says so."`
	PreviewAllowRanges string `yaml:"url_preview_allow_ranges" doc:"Comma-separated CIDR ranges that URL previews may reach although they are not public (e.g. 10.1.0.0/16 for an intranet)."`
	PreviewDenyRanges  string `yaml:"url_preview_deny_ranges" doc:"Comma-separated CIDR ranges that URL previews never reach, even public ones."`
	PreviewDenyHosts   string `yaml:"url_preview_deny_hosts" doc:"Comma-separated host names that are never previewed, with their subdomains (example.org also denies www.example.org)."`
	PreviewMaxBytes    int64  `yaml:"url_preview_max_bytes" doc:"Largest page or image read for a URL preview, in bytes."`
}

// ThumbnailSize is one entry of media.thumbnail_sizes.
type ThumbnailSize struct {
	Width, Height int
	Method        string // crop or scale
}

// defaultMedia are the media defaults: 50 MiB uploads, the thumbnail sizes
// the spec recommends, unauthenticated downloads frozen, previews off.
func defaultMedia() MediaConfig {
	return MediaConfig{
		MaxUploadBytes:    50 << 20,
		MaxImagePixels:    32_000_000,
		ThumbnailSizes:    "32x32-crop,96x96-crop,320x240-scale,640x480-scale,800x600-scale",
		LegacyFreeze:      "on",
		UnusedExpiry:      24 * time.Hour,
		MaxPendingUploads: 10,
		PreviewMaxBytes:   10 << 20,
	}
}

// Thumbnails parses ThumbnailSizes.
func (m *MediaConfig) Thumbnails() ([]ThumbnailSize, error) {
	var out []ThumbnailSize
	for _, part := range strings.Split(m.ThumbnailSizes, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		dims, method, ok := strings.Cut(part, "-")
		ws, hs, ok2 := strings.Cut(dims, "x")
		w, err1 := strconv.Atoi(ws)
		h, err2 := strconv.Atoi(hs)
		if !ok || !ok2 || err1 != nil || err2 != nil || w < 1 || h < 1 || w > 4096 || h > 4096 || (method != "crop" && method != "scale") {
			return nil, fmt.Errorf("%q is not WIDTHxHEIGHT-crop or WIDTHxHEIGHT-scale (sizes 1 to 4096)", part)
		}
		out = append(out, ThumbnailSize{Width: w, Height: h, Method: method})
	}
	return out, nil
}

// LegacyCutoff parses LegacyFreeze: media stored before the returned time
// may be served by the unauthenticated endpoints. "on" is the zero time
// (nothing), "off" the far future (everything).
func (m *MediaConfig) LegacyCutoff() (time.Time, error) {
	switch s := strings.TrimSpace(m.LegacyFreeze); s {
	case "on":
		return time.Time{}, nil
	case "off":
		return time.Unix(1<<62, 0), nil
	default:
		if t, err := time.Parse(time.DateOnly, s); err == nil {
			return t, nil
		}
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			return t, nil
		}
		return time.Time{}, fmt.Errorf("%q is not on, off, a date (2024-09-01) or an RFC 3339 time", s)
	}
}

// PreviewRanges parses PreviewAllowRanges and PreviewDenyRanges.
func (m *MediaConfig) PreviewRanges() (allow, deny []netip.Prefix, err error) {
	if allow, err = parsePrefixes(m.PreviewAllowRanges); err != nil {
		return nil, nil, fmt.Errorf("url_preview_allow_ranges: %w", err)
	}
	if deny, err = parsePrefixes(m.PreviewDenyRanges); err != nil {
		return nil, nil, fmt.Errorf("url_preview_deny_ranges: %w", err)
	}
	return allow, deny, nil
}

// PreviewDeniedHosts lists PreviewDenyHosts in lower case.
func (m *MediaConfig) PreviewDeniedHosts() []string {
	var out []string
	for _, h := range strings.Split(m.PreviewDenyHosts, ",") {
		if h = strings.Trim(strings.ToLower(strings.TrimSpace(h)), "."); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// parsePrefixes parses comma-separated CIDR ranges; a bare address is a
// range of one.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "/") {
			a, err := netip.ParseAddr(part)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or a CIDR range", part)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR range", part)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// validate checks the media options.
func (m *MediaConfig) validate() error {
	bad := func(opt, format string, args ...any) error {
		return fmt.Errorf("config: media.%s: %s", opt, fmt.Sprintf(format, args...))
	}
	if m.MaxUploadBytes < 1 {
		return bad("max_upload_bytes", "must be at least 1")
	}
	if m.MaxImagePixels < 1 {
		return bad("max_image_pixels", "must be at least 1")
	}
	if _, err := m.Thumbnails(); err != nil {
		return bad("thumbnail_sizes", "%v", err)
	}
	if _, err := m.LegacyCutoff(); err != nil {
		return bad("legacy_freeze", "%v", err)
	}
	if m.UnusedExpiry < time.Minute {
		return bad("unused_expiry", "must be at least 1m")
	}
	if m.MaxPendingUploads < 1 {
		return bad("max_pending_uploads", "must be at least 1")
	}
	if m.RemoteRetention < 0 {
		return bad("remote_retention", "must not be negative")
	}
	if m.LocalRetention < 0 {
		return bad("local_retention", "must not be negative")
	}
	if _, _, err := m.PreviewRanges(); err != nil {
		return fmt.Errorf("config: media.%w", err)
	}
	if m.PreviewMaxBytes < 1024 {
		return bad("url_preview_max_bytes", "must be at least 1024")
	}
	return nil
}
