package media_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// gradient is a w×h image with colours varying across it, so that a
// scaled or cropped thumbnail is not trivially uniform.
func gradient(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{R: uint8(x * 255 / w), G: uint8(y * 255 / h), B: 128, A: 255})
		}
	}
	return img
}

func pngBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, gradient(w, h)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, gradient(w, h), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// gifBytes is a w×h GIF of frames frames (animated when more than one).
func gifBytes(t *testing.T, w, h, frames int) []byte {
	t.Helper()
	g := &gif.GIF{}
	for i := range frames {
		p := image.NewPaletted(image.Rect(0, 0, w, h), palette.Plan9)
		for y := range h {
			for x := range w {
				p.Set(x, y, color.RGBA{R: uint8((x + i*40) % 256), G: uint8(y % 256), B: uint8(i * 80), A: 255})
			}
		}
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, 10)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bitWriter writes the LSB-first bit stream of WebP lossless.
type bitWriter struct {
	buf  []byte
	acc  uint64
	bits uint
}

func (b *bitWriter) write(v uint64, n uint) {
	b.acc |= v << b.bits
	b.bits += n
	for b.bits >= 8 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc >>= 8
		b.bits -= 8
	}
}

func (b *bitWriter) bytes() []byte {
	if b.bits > 0 {
		return append(b.buf, byte(b.acc))
	}
	return b.buf
}

// webpBytes is a w×h lossless WebP of one colour: every prefix code is a
// "simple" code of one symbol, so each pixel takes no bits. Go has no WebP
// encoder; this is the smallest valid file.
func webpBytes(w, h int, c color.NRGBA) []byte {
	var bw bitWriter
	bw.write(uint64(w-1), 14)
	bw.write(uint64(h-1), 14)
	bw.write(0, 1)                                       // alpha unused
	bw.write(0, 3)                                       // version
	bw.write(0, 1)                                       // no transform
	bw.write(0, 1)                                       // no colour cache
	bw.write(0, 1)                                       // no meta prefix codes
	for _, sym := range []uint8{c.G, c.R, c.B, c.A, 0} { // green, red, blue, alpha, distance
		bw.write(1, 1) // simple code
		bw.write(0, 1) // one symbol
		bw.write(1, 1) // 8-bit symbol
		bw.write(uint64(sym), 8)
	}
	data := append([]byte{0x2f}, bw.bytes()...)
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	var out bytes.Buffer
	out.WriteString("RIFF")
	_ = binary.Write(&out, binary.LittleEndian, uint32(4+8+len(data)))
	out.WriteString("WEBPVP8L")
	_ = binary.Write(&out, binary.LittleEndian, uint32(len(data)))
	out.Write(data)
	return out.Bytes()
}

// pngBomb is a PNG whose header claims w×h pixels, followed by a few bytes
// of image data that are not even valid: decoding it would need w×h×4
// bytes of memory before finding out.
func pngBomb(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(data)))
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		b.WriteString(typ)
		b.Write(data)
		_ = binary.Write(&b, binary.BigEndian, crc.Sum32())
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8-bit RGBA
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x63, 0x60})
	chunk("IEND", nil)
	return b.Bytes()
}

// upload posts body as c and returns the media ID of the new mxc:// URI.
func upload(t *testing.T, srv *testutil.Server, c *testutil.Client, body []byte, ctype, filename string) string {
	t.Helper()
	path := "/_matrix/media/v3/upload"
	if filename != "" {
		path += "?filename=" + url.QueryEscape(filename)
	}
	r := c.DoWithHeaders("POST", path, body, map[string]string{"Content-Type": ctype})
	if r.Status != http.StatusOK {
		t.Fatalf("upload: %d %s", r.Status, r.Body)
	}
	uri, _ := r.JSON["content_uri"].(string)
	prefix := "mxc://" + srv.Config.ServerName + "/"
	if !strings.HasPrefix(uri, prefix) {
		t.Fatalf("content_uri %q does not start with %s", uri, prefix)
	}
	return strings.TrimPrefix(uri, prefix)
}

// mediaPath is a client media path for server/mediaID, e.g.
// mediaPath("download", …).
func mediaPath(kind, server, mediaID string) string {
	return "/_matrix/client/v1/media/" + kind + "/" + url.PathEscape(server) + "/" + mediaID
}

// requireError fails unless r is the Matrix error status/errcode.
func requireError(t *testing.T, what string, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("%s: %d %s, want %d %s", what, r.Status, r.Body, status, errcode)
	}
}

// requireStatus fails unless r has the status.
func requireStatus(t *testing.T, what string, r *testutil.Response, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: %d %s, want %d", what, r.Status, shorten(r.Body), status)
	}
}

func shorten(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// decodeImage decodes a thumbnail and checks its format and size.
func decodeImage(t *testing.T, what string, r *testutil.Response, wantType string, w, h int) image.Image {
	t.Helper()
	requireStatus(t, what, r, http.StatusOK)
	if ct := r.Header.Get("Content-Type"); ct != wantType {
		t.Fatalf("%s: Content-Type %q, want %q", what, ct, wantType)
	}
	img, format, err := image.Decode(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if "image/"+format != wantType {
		t.Fatalf("%s: the bytes are %s, want %s", what, format, wantType)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Fatalf("%s: %dx%d, want %dx%d", what, b.Dx(), b.Dy(), w, h)
	}
	return img
}

// readAll reads a body for tests.
func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
