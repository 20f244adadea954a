package media_test

import (
	"bytes"
	"context"
	"fmt"
	"image/color"
	"image/gif"
	"net/http"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// thumbCount is the number of thumbnails srv stores for mediaID.
func thumbCount(t *testing.T, srv *testutil.Server, mediaID string) int {
	t.Helper()
	var n int
	if err := srv.DB.QueryRow(context.Background(), `SELECT COUNT(*) FROM media_thumbnails WHERE media_id = $1`, mediaID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestThumbnails(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "password")
		server := srv.Config.ServerName
		thumb := func(id string, w, h int, method string, extra string) *testutil.Response {
			return alice.Do("GET", fmt.Sprintf("%s?width=%d&height=%d&method=%s%s", mediaPath("thumbnail", server, id), w, h, method, extra), nil)
		}

		pngID := upload(t, srv, alice, pngBytes(t, 1000, 500), "image/png", "wide.png")
		t.Run("common sizes are made at upload", func(t *testing.T) {
			if n := thumbCount(t, srv, pngID); n != 5 {
				t.Fatalf("%d thumbnails after upload, want the 5 configured sizes", n)
			}
		})
		t.Run("PNG: crop and scale", func(t *testing.T) {
			for _, c := range []struct {
				w, h         int
				method       string
				wantW, wantH int
			}{
				{32, 32, "crop", 32, 32},
				{96, 96, "crop", 96, 96},
				{320, 240, "scale", 320, 160},
				{800, 600, "scale", 800, 400},
				{200, 50, "crop", 200, 50},
				{100, 1000, "crop", 50, 500}, // taller than the source: cut, never enlarged
				{50, 300, "scale", 50, 25},
				{123, 77, "scale", 123, 61}, // on demand
			} {
				r := thumb(pngID, c.w, c.h, c.method, "")
				decodeImage(t, fmt.Sprintf("%dx%d %s", c.w, c.h, c.method), r, "image/png", c.wantW, c.wantH)
				if cd := r.Header.Get("Content-Disposition"); cd != "inline; filename=thumbnail.png" {
					t.Fatalf("Content-Disposition %q", cd)
				}
				if r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("Content-Security-Policy") == "" {
					t.Fatalf("safety headers missing: %v", r.Header)
				}
			}
			n := thumbCount(t, srv, pngID)
			decodeImage(t, "again", thumb(pngID, 123, 77, "scale", ""), "image/png", 123, 61)
			if thumbCount(t, srv, pngID) != n {
				t.Fatal("a thumbnail asked for twice was made twice")
			}
		})
		t.Run("a request larger than the image gets the original", func(t *testing.T) {
			r := thumb(pngID, 2000, 2000, "scale", "")
			decodeImage(t, "larger", r, "image/png", 1000, 500)
			if !bytes.Equal(r.Body, pngBytes(t, 1000, 500)) {
				t.Fatal("not the original bytes")
			}
			decodeImage(t, "method defaults to scale", alice.Do("GET", mediaPath("thumbnail", server, pngID)+"?width=320&height=240", nil), "image/png", 320, 160)
		})
		t.Run("JPEG", func(t *testing.T) {
			id := upload(t, srv, alice, jpegBytes(t, 640, 480), "image/jpeg", "")
			decodeImage(t, "jpeg crop", thumb(id, 96, 96, "crop", ""), "image/jpeg", 96, 96)
			decodeImage(t, "jpeg scale", thumb(id, 320, 320, "scale", ""), "image/jpeg", 320, 240)
		})
		t.Run("WebP", func(t *testing.T) {
			id := upload(t, srv, alice, webpBytes(400, 300, color.NRGBA{R: 200, G: 10, B: 10, A: 255}), "image/webp", "")
			img := decodeImage(t, "webp scale", thumb(id, 100, 100, "scale", ""), "image/png", 100, 75)
			if r, g, _, _ := img.At(50, 30).RGBA(); r>>8 != 200 || g>>8 != 10 {
				t.Fatalf("thumbnail colour %v, want the source's red", img.At(50, 30))
			}
		})
		t.Run("GIF: first frame, or animated on request", func(t *testing.T) {
			anim := gifBytes(t, 200, 100, 3)
			id := upload(t, srv, alice, anim, "image/gif", "")
			decodeImage(t, "still", thumb(id, 96, 96, "crop", ""), "image/png", 96, 96)
			decodeImage(t, "animated=false", thumb(id, 96, 96, "crop", "&animated=false"), "image/png", 96, 96)
			r := thumb(id, 96, 96, "crop", "&animated=true")
			decodeImage(t, "animated", r, "image/gif", 96, 96)
			g, err := gif.DecodeAll(bytes.NewReader(r.Body))
			if err != nil || len(g.Image) != 3 {
				t.Fatalf("animated thumbnail: %v, %d frames", err, len(g.Image))
			}
			// Larger than the source: the original when animated, its first
			// frame otherwise (never an animation unless asked for).
			r = thumb(id, 500, 500, "scale", "&animated=true")
			if decodeImage(t, "original", r, "image/gif", 200, 100); !bytes.Equal(r.Body, anim) {
				t.Fatal("animated request larger than the GIF: not the original")
			}
			decodeImage(t, "still original", thumb(id, 500, 500, "scale", ""), "image/png", 200, 100)
			still := upload(t, srv, alice, gifBytes(t, 200, 100, 1), "image/gif", "")
			decodeImage(t, "one-frame GIF, animated=true", thumb(still, 96, 96, "crop", "&animated=true"), "image/png", 96, 96)
		})
		t.Run("errors", func(t *testing.T) {
			textID := upload(t, srv, alice, []byte("not an image"), "text/plain", "")
			requireError(t, "not an image", thumb(textID, 32, 32, "crop", ""), 400, "M_UNKNOWN")
			fake := upload(t, srv, alice, []byte("not really a png"), "image/png", "")
			requireError(t, "image that is not one", thumb(fake, 32, 32, "crop", ""), 400, "M_UNKNOWN")
			base := mediaPath("thumbnail", server, pngID)
			requireError(t, "no width", alice.Do("GET", base+"?height=32", nil), 400, "M_MISSING_PARAM")
			requireError(t, "no height", alice.Do("GET", base+"?width=32", nil), 400, "M_MISSING_PARAM")
			requireError(t, "width not a number", alice.Do("GET", base+"?width=abc&height=32", nil), 400, "M_INVALID_PARAM")
			requireError(t, "negative height", alice.Do("GET", base+"?width=32&height=-4", nil), 400, "M_INVALID_PARAM")
			requireError(t, "unknown method", alice.Do("GET", base+"?width=32&height=32&method=zoom", nil), 400, "M_INVALID_PARAM")
			requireError(t, "bad animated", alice.Do("GET", base+"?width=32&height=32&animated=maybe", nil), 400, "M_INVALID_PARAM")
			requireError(t, "unknown media", thumb("nosuchmedia", 32, 32, "crop", ""), 404, "M_NOT_FOUND")
			requireError(t, "no token", srv.Client(t).Do("GET", base+"?width=32&height=32", nil), 401, "M_MISSING_TOKEN")
		})
	})
}

// TestDecompressionBomb uploads a PNG whose header claims 100000×100000
// pixels (40 GB decoded). It is stored like any file, but thumbnailing
// refuses it from the header alone: decoding it would exhaust memory, and
// the answer is 413 M_TOO_LARGE, not the 400 that decoding its invalid
// image data would give.
func TestDecompressionBomb(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "password")
		bomb := pngBomb(100000, 100000)
		id := upload(t, srv, alice, bomb, "image/png", "bomb.png")
		if n := thumbCount(t, srv, id); n != 0 {
			t.Fatalf("%d thumbnails made of a bomb", n)
		}
		for _, method := range []string{"crop", "scale"} {
			r := alice.Do("GET", mediaPath("thumbnail", srv.Config.ServerName, id)+"?width=32&height=32&method="+method, nil)
			requireError(t, "thumbnail of a bomb", r, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		}
		r := alice.Do("GET", mediaPath("download", srv.Config.ServerName, id), nil)
		if r.Status != 200 || !bytes.Equal(r.Body, bomb) {
			t.Fatalf("download of the file itself: %d", r.Status)
		}
	})
}
