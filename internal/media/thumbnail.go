package media

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // registers WebP with image.Decode

	"github.com/palpo-go/palpo/internal/httpx"
)

// Thumbnails are made from JPEG, PNG, GIF (first frame, or every frame when
// animated=true) and WebP (still) images. An image's size is read from its
// header when it is stored; one with more than max_image_pixels pixels is
// never decoded, so that a small file claiming a huge size (a decompression
// bomb) costs nothing. Thumbnails are cached in the storage like any
// content; the sizes of media.thumbnail_sizes are made at upload.

// thumbnailable are the image formats (image.DecodeConfig names) Palpo
// decodes.
var thumbnailable = map[string]bool{"jpeg": true, "png": true, "gif": true, "webp": true}

// maxThumbDim is the largest thumbnail side made; a bigger request gets the
// original image, which is at least as large as asked.
const maxThumbDim = 2048

// maxAnimatedPixels bounds the pixels of all frames of an animated
// thumbnail together; a longer or larger animation gets a still one.
const maxAnimatedPixels = 4_000_000

// thumbnailTimeout bounds the wait for a decoding slot and the making of
// one thumbnail.
const thumbnailTimeout = 2 * time.Minute

// thumbPlan is what a thumbnail request resolves to for a source image.
type thumbPlan struct {
	original bool            // serve the original content as it is
	crop     image.Rectangle // the region of the source shown
	w, h     int             // size of the thumbnail
}

// planThumbnail applies the spec's methods to a source of srcW×srcH asked
// for at reqW×reqH. scale fits the image inside the requested box keeping
// its aspect ratio; crop fills the box, cutting the overflow around the
// centre. Neither ever enlarges: a source no larger than the box is served
// as it is, and crop on a source smaller than the box in one direction cuts
// the requested aspect ratio out of it unscaled.
func planThumbnail(srcW, srcH, reqW, reqH int, method string) thumbPlan {
	if srcW <= reqW && srcH <= reqH || reqW > maxThumbDim || reqH > maxThumbDim {
		return thumbPlan{original: true}
	}
	full := image.Rect(0, 0, srcW, srcH)
	if method == "scale" {
		// Width-limited when reqW/srcW <= reqH/srcH.
		if int64(reqW)*int64(srcH) <= int64(reqH)*int64(srcW) {
			return thumbPlan{crop: full, w: reqW, h: max(1, int(int64(reqW)*int64(srcH)/int64(srcW)))}
		}
		return thumbPlan{crop: full, w: max(1, int(int64(reqH)*int64(srcW)/int64(srcH))), h: reqH}
	}
	cw, ch := srcW, srcH
	if int64(srcW)*int64(reqH) > int64(srcH)*int64(reqW) { // source wider than the box
		cw = max(1, int(int64(srcH)*int64(reqW)/int64(reqH)))
	} else {
		ch = max(1, int(int64(srcW)*int64(reqH)/int64(reqW)))
	}
	x, y := (srcW-cw)/2, (srcH-ch)/2
	p := thumbPlan{crop: image.Rect(x, y, x+cw, y+ch), w: cw, h: ch}
	if cw >= reqW && ch >= reqH {
		p.w, p.h = reqW, reqH
	}
	return p
}

// thumbParams are the query parameters of a thumbnail request.
type thumbParams struct {
	width, height int
	method        string
	animated      bool
}

// parseThumbParams reads width, height, method and animated; bad values
// are 400 M_INVALID_PARAM, missing sizes 400 M_MISSING_PARAM.
func parseThumbParams(r *http.Request) (thumbParams, error) {
	q := r.URL.Query()
	var p thumbParams
	for _, d := range []struct {
		name string
		dst  *int
	}{{"width", &p.width}, {"height", &p.height}} {
		v := q.Get(d.name)
		if v == "" {
			return p, httpx.MissingParam("%s is required", d.name)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<20 {
			return p, httpx.InvalidParam("%s must be a positive integer", d.name)
		}
		*d.dst = n
	}
	switch p.method = q.Get("method"); p.method {
	case "":
		p.method = "scale"
	case "scale", "crop":
	default:
		return p, httpx.InvalidParam("method must be crop or scale")
	}
	var err error
	if p.animated, err = httpx.QueryBool(r, "animated", false); err != nil {
		return p, err
	}
	return p, nil
}

// cannotThumbnail is the spec's answer for content that is not an image.
func cannotThumbnail() error {
	return httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")
}

// localThumbnail returns the thumbnail of stored media m (local, or remote
// and cached whole) for p, making and caching it when needed. original is
// true when the original content is the answer (it is no larger than asked).
func (s *Service) localThumbnail(ctx context.Context, m *mediaRow, src *source, p thumbParams) (t *thumbRow, original bool, err error) {
	if m.ImageFormat == "" {
		return nil, false, cannotThumbnail()
	}
	if int64(m.Width)*int64(m.Height) > s.cfg.MaxImagePixels {
		return nil, false, httpx.TooLarge("The image is too large to thumbnail (%d×%d pixels)", m.Width, m.Height)
	}
	plan := planThumbnail(m.Width, m.Height, p.width, p.height, p.method)
	frames := 1
	if m.ImageFormat == "gif" {
		if frames, err = s.gifFrameCount(m); err != nil {
			return nil, false, cannotThumbnail()
		}
	}
	animated := p.animated && frames > 1
	if plan.original {
		if frames == 1 || animated {
			return nil, true, nil
		}
		// An animated GIF asked for still: its first frame, full size.
		plan = thumbPlan{crop: image.Rect(0, 0, m.Width, m.Height), w: m.Width, h: m.Height}
	}
	if animated && int64(frames)*int64(m.Width)*int64(m.Height) > s.cfg.MaxImagePixels ||
		animated && int64(frames)*int64(plan.w)*int64(plan.h) > maxAnimatedPixels {
		animated = false
	}
	if t, err := s.getThumbnail(ctx, m.ServerName, m.MediaID, plan.w, plan.h, p.method, animated); err != nil || t != nil {
		return t, false, err
	}
	key := fmt.Sprintf("thumb %s/%s %dx%d %s %v", m.ServerName, m.MediaID, plan.w, plan.h, p.method, animated)
	v, err, _ := s.flight.Do(key, func() (any, error) {
		// Shared by every request for this thumbnail: not cancelled with
		// the first one.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thumbnailTimeout)
		defer cancel()
		return s.makeThumbnail(ctx, m, src, plan, p.method, animated)
	})
	if err != nil {
		return nil, false, err
	}
	return v.(*thumbRow), false, nil
}

// makeThumbnail renders, stores and records one thumbnail.
func (s *Service) makeThumbnail(ctx context.Context, m *mediaRow, src *source, plan thumbPlan, method string, animated bool) (*thumbRow, error) {
	release, err := s.acquireDecode(ctx)
	if err != nil {
		return nil, httpx.LimitExceeded(time.Second) // every decoding slot busy for minutes
	}
	defer release()
	var buf bytes.Buffer
	ctype := "image/png"
	if animated {
		g, err := s.decodeGIF(m)
		if err != nil {
			return nil, err
		}
		ctype = "image/gif"
		if err := gif.EncodeAll(&buf, animateThumbnail(g, plan)); err != nil {
			return nil, err
		}
	} else {
		img, err := src.image()
		if err != nil {
			return nil, err
		}
		out := image.NewRGBA(image.Rect(0, 0, plan.w, plan.h))
		draw.CatmullRom.Scale(out, out.Bounds(), img, plan.crop, draw.Src, nil)
		if m.ImageFormat == "jpeg" {
			ctype = "image/jpeg"
			err = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 85})
		} else {
			err = png.Encode(&buf, out)
		}
		if err != nil {
			return nil, err
		}
	}
	st, err := s.stage(&buf, int64(buf.Len()))
	if err != nil {
		return nil, err
	}
	t := &thumbRow{Width: plan.w, Height: plan.h, Method: method, Animated: animated, ContentType: ctype, Size: st.size, SHA256: st.hash}
	err = s.commitStaged(st, func() error { return s.putThumbnail(ctx, m.ServerName, m.MediaID, t) })
	return t, err
}

// source decodes the first frame of a media item's image once, however
// many thumbnails are made of it.
type source struct {
	s    *Service
	m    *mediaRow
	img  image.Image
	err  error
	done bool
}

// newSource returns the lazy decoder of m's image.
func (s *Service) newSource(m *mediaRow) *source { return &source{s: s, m: m} }

// image decodes the image, after checking its size from the header again.
func (src *source) image() (image.Image, error) {
	if !src.done {
		src.img, src.err = src.s.decodeImage(src.m)
		src.done = true
	}
	return src.img, src.err
}

// decodeImage decodes the first frame of m's content, after checking the
// size in its header again.
func (s *Service) decodeImage(m *mediaRow) (image.Image, error) {
	c, err := s.openChecked(m)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	img, _, err := image.Decode(bufio.NewReader(c))
	if err != nil {
		return nil, cannotThumbnail()
	}
	return img, nil
}

// openChecked opens m's content for decoding: it reads the image header
// and refuses an image over max_image_pixels, then rewinds.
func (s *Service) openChecked(m *mediaRow) (Content, error) {
	c, err := s.store.Open(m.SHA256)
	if err != nil {
		return nil, err
	}
	cfg, _, err := image.DecodeConfig(bufio.NewReader(c))
	if err == nil {
		_, err = c.Seek(0, io.SeekStart)
	}
	if err != nil {
		c.Close()
		return nil, cannotThumbnail()
	}
	if int64(cfg.Width)*int64(cfg.Height) > s.cfg.MaxImagePixels {
		c.Close()
		return nil, httpx.TooLarge("The image is too large to thumbnail (%d×%d pixels)", cfg.Width, cfg.Height)
	}
	return c, nil
}
