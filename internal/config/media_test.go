package config

import (
	"strings"
	"testing"
	"time"
)

func TestMediaOptions(t *testing.T) {
	cfg, err := Load("", []string{
		"PALPO_MEDIA_MAX_UPLOAD_BYTES=1000",
		"PALPO_MEDIA_THUMBNAIL_SIZES=64x64-crop, 100x50-scale",
		"PALPO_MEDIA_LEGACY_FREEZE=2024-09-01",
		"PALPO_MEDIA_URL_PREVIEWS=true",
		"PALPO_MEDIA_URL_PREVIEW_ALLOW_RANGES=10.0.0.0/8, 192.168.1.7",
		"PALPO_MEDIA_URL_PREVIEW_DENY_HOSTS=Example.org., bad.example",
		"PALPO_MEDIA_REMOTE_RETENTION=720h",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Media
	sizes, _ := m.Thumbnails()
	if m.MaxUploadBytes != 1000 || len(sizes) != 2 || sizes[1] != (ThumbnailSize{Width: 100, Height: 50, Method: "scale"}) ||
		!m.URLPreviews || m.RemoteRetention != 720*time.Hour {
		t.Fatalf("%+v %v", m, sizes)
	}
	if cut, _ := m.LegacyCutoff(); !cut.Equal(time.Date(2024, 9, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("cutoff %v", cut)
	}
	allow, deny, _ := m.PreviewRanges()
	if len(allow) != 2 || allow[1].String() != "192.168.1.7/32" || len(deny) != 0 {
		t.Fatalf("ranges %v %v", allow, deny)
	}
	if hosts := m.PreviewDeniedHosts(); strings.Join(hosts, ",") != "example.org,bad.example" {
		t.Fatalf("hosts %v", hosts)
	}
	d := defaultMedia()
	if on, _ := d.LegacyCutoff(); !on.IsZero() || d.URLPreviews {
		t.Fatal("defaults: the legacy endpoints must be frozen and previews off")
	}
	d.LegacyFreeze = "off"
	if off, _ := d.LegacyCutoff(); off.Before(time.Now().AddDate(100, 0, 0)) {
		t.Fatalf("off: cutoff %v", off)
	}
}

func TestInvalidMediaOptions(t *testing.T) {
	for env, opt := range map[string]string{
		"PALPO_MEDIA_MAX_UPLOAD_BYTES=0":                     "media.max_upload_bytes",
		"PALPO_MEDIA_MAX_IMAGE_PIXELS=-1":                    "media.max_image_pixels",
		"PALPO_MEDIA_THUMBNAIL_SIZES=32x32":                  "media.thumbnail_sizes",
		"PALPO_MEDIA_THUMBNAIL_SIZES=0x10-crop":              "media.thumbnail_sizes",
		"PALPO_MEDIA_THUMBNAIL_SIZES=10x10-zoom":             "media.thumbnail_sizes",
		"PALPO_MEDIA_LEGACY_FREEZE=sometimes":                "media.legacy_freeze",
		"PALPO_MEDIA_UNUSED_EXPIRY=1s":                       "media.unused_expiry",
		"PALPO_MEDIA_MAX_PENDING_UPLOADS=0":                  "media.max_pending_uploads",
		"PALPO_MEDIA_LOCAL_RETENTION=-1h":                    "media.local_retention",
		"PALPO_MEDIA_URL_PREVIEW_ALLOW_RANGES=10.0.0.0/33":   "media.url_preview_allow_ranges",
		"PALPO_MEDIA_URL_PREVIEW_DENY_RANGES=not-an-address": "media.url_preview_deny_ranges",
		"PALPO_MEDIA_URL_PREVIEW_MAX_BYTES=10":               "media.url_preview_max_bytes",
	} {
		_, err := Load("", []string{env})
		if err == nil || !strings.Contains(err.Error(), opt) {
			t.Errorf("%s: %v, want an error naming %s", env, err, opt)
		}
	}
}
