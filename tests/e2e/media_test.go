package e2e

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/palpo-go/palpo/internal/testutil"
)

// avatarPNG is a 256×256 PNG for the avatar.
func avatarPNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 256, 256))
	for y := range 256 {
		for x := range 256 {
			img.Set(x, y, color.NRGBA{R: uint8(x), G: uint8(y), B: 200, A: 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestMedia is issue 8's client check: a user sets an avatar and shares a
// file; another user sees the avatar, downloads a thumbnail of it and the
// file, through mautrix-go's media calls (the authenticated endpoints).
func TestMedia(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.RegisterMautrix(t, "alice", "alice-password")
		bob := srv.RegisterMautrix(t, "bob", "bob-password")

		cfg := must(alice.GetMediaConfig(reqCtx(t)))(t, "media config")
		if cfg.UploadSize != srv.Config.Media.MaxUploadBytes {
			t.Fatalf("m.upload.size %d, want %d", cfg.UploadSize, srv.Config.Media.MaxUploadBytes)
		}

		// The avatar: upload, set, seen by bob, thumbnailed for him.
		avatar := avatarPNG(t)
		up := must(alice.UploadBytesWithName(reqCtx(t), avatar, "image/png", "me.png"))(t, "upload avatar")
		if up.ContentURI.Homeserver != srv.Config.ServerName || up.ContentURI.FileID == "" {
			t.Fatalf("content URI %s", up.ContentURI)
		}
		noErr(t, "set avatar", alice.SetAvatarURL(reqCtx(t), up.ContentURI))
		seen := must(bob.GetAvatarURL(reqCtx(t), alice.UserID))(t, "bob reads alice's avatar")
		if seen != up.ContentURI {
			t.Fatalf("bob sees avatar %s, want %s", seen, up.ContentURI)
		}
		resp := must(bob.DownloadThumbnail(reqCtx(t), seen, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"}))(t, "thumbnail")
		thumb, format, err := image.Decode(resp.Body)
		resp.Body.Close()
		if err != nil || format != "png" || thumb.Bounds().Dx() != 32 || thumb.Bounds().Dy() != 32 {
			t.Fatalf("avatar thumbnail: %v %s %v", err, format, thumb.Bounds())
		}
		if got := must(bob.DownloadBytes(reqCtx(t), seen))(t, "download avatar"); !bytes.Equal(got, avatar) {
			t.Fatal("downloaded avatar differs from the upload")
		}

		// A file, with its name.
		file := []byte("minutes of the meeting\n")
		fup := must(alice.UploadBytesWithName(reqCtx(t), file, "text/plain", "minutes.txt"))(t, "upload file")
		resp = must(bob.Download(reqCtx(t), fup.ContentURI))(t, "download file")
		body := new(bytes.Buffer)
		_, _ = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(body.Bytes(), file) || resp.Header.Get("Content-Disposition") != "inline; filename=minutes.txt" ||
			resp.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("file download: %q %v", body.Bytes(), resp.Header)
		}

		// Asynchronous upload: the URI first, the content later.
		created := must(alice.CreateMXC(reqCtx(t)))(t, "create mxc")
		must(alice.UploadMedia(reqCtx(t), mautrix.ReqUploadMedia{
			ContentBytes: []byte("late"), ContentType: "text/plain", MXC: created.ContentURI,
		}))(t, "upload to the created mxc")
		if got := must(bob.DownloadBytes(reqCtx(t), created.ContentURI))(t, "download async upload"); string(got) != "late" {
			t.Fatalf("async upload: %q", got)
		}
		_, err = alice.UploadMedia(reqCtx(t), mautrix.ReqUploadMedia{ContentBytes: []byte("again"), ContentType: "text/plain", MXC: created.ContentURI})
		requireMatrixError(t, "second upload to the same mxc", err, http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA")

		_, err = bob.DownloadBytes(reqCtx(t), id.ContentURI{Homeserver: srv.Config.ServerName, FileID: "doesNotExist"})
		requireMatrixError(t, "download of unknown media", err, http.StatusNotFound, "M_NOT_FOUND")
	})
}
