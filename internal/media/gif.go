package media

import (
	"bufio"
	"errors"
	"image"
	"image/color"
	"image/gif"
	"io"

	"golang.org/x/image/draw"
)

// maxCountedFrames stops counting the frames of a GIF: more is "animated
// and too long to animate a thumbnail of" either way.
const maxCountedFrames = 100_000

// gifFrameCount counts the frames of m's GIF content by walking its block
// structure, without decompressing any image data.
func (s *Service) gifFrameCount(m *mediaRow) (int, error) {
	c, err := s.store.Open(m.SHA256)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return countGIFFrames(bufio.NewReader(c))
}

var errBadGIF = errors.New("media: malformed GIF")

// countGIFFrames walks a GIF stream: header, logical screen descriptor,
// global colour table, then extension and image blocks up to the trailer.
func countGIFFrames(br *bufio.Reader) (int, error) {
	var hdr [13]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || string(hdr[:3]) != "GIF" {
		return 0, errBadGIF
	}
	if hdr[10]&0x80 != 0 {
		if _, err := br.Discard(3 << ((hdr[10] & 7) + 1)); err != nil {
			return 0, errBadGIF
		}
	}
	frames := 0
	for frames < maxCountedFrames {
		b, err := br.ReadByte()
		if err != nil {
			return frames, nil // truncated after some frames: what decoders show
		}
		switch b {
		case 0x21: // extension: label, then sub-blocks
			if _, err := br.ReadByte(); err != nil {
				return frames, nil
			}
		case 0x2C: // image: descriptor, local colour table, LZW code size, data sub-blocks
			var desc [9]byte
			if _, err := io.ReadFull(br, desc[:]); err != nil {
				return frames, nil
			}
			if desc[8]&0x80 != 0 {
				if _, err := br.Discard(3 << ((desc[8] & 7) + 1)); err != nil {
					return frames, nil
				}
			}
			if _, err := br.ReadByte(); err != nil {
				return frames, nil
			}
			frames++
		case 0x3B: // trailer
			return frames, nil
		default:
			if frames > 0 {
				return frames, nil
			}
			return 0, errBadGIF
		}
		if err := skipSubBlocks(br); err != nil {
			return frames, nil
		}
	}
	return frames, nil
}

// skipSubBlocks skips data sub-blocks up to the terminating empty one.
func skipSubBlocks(br *bufio.Reader) error {
	for {
		n, err := br.ReadByte()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if _, err := br.Discard(int(n)); err != nil {
			return err
		}
	}
}

// decodeGIF decodes every frame of m's GIF content. The caller has checked
// that frames × width × height is within max_image_pixels.
func (s *Service) decodeGIF(m *mediaRow) (*gif.GIF, error) {
	c, err := s.openChecked(m)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	g, err := gif.DecodeAll(bufio.NewReader(c))
	if err != nil || len(g.Image) == 0 {
		return nil, cannotThumbnail()
	}
	return g, nil
}

// animateThumbnail scales an animated GIF frame by frame: each frame is
// composed on the canvas as a viewer shows it (honouring the disposal
// methods), then the visible picture is scaled and mapped back onto the
// frame's palette.
func animateThumbnail(g *gif.GIF, plan thumbPlan) *gif.GIF {
	screen := image.Rect(0, 0, g.Config.Width, g.Config.Height)
	if screen.Empty() {
		screen = g.Image[0].Bounds()
	}
	canvas := image.NewRGBA(screen)
	var previous *image.RGBA
	out := &gif.GIF{LoopCount: g.LoopCount, Config: image.Config{Width: plan.w, Height: plan.h}}
	bounds := image.Rect(0, 0, plan.w, plan.h)
	scaled := image.NewRGBA(bounds)
	for i, frame := range g.Image {
		disposal := byte(0)
		if i < len(g.Disposal) {
			disposal = g.Disposal[i]
		}
		if disposal == gif.DisposalPrevious {
			previous = image.NewRGBA(screen)
			draw.Copy(previous, screen.Min, canvas, screen, draw.Src, nil)
		}
		draw.Draw(canvas, frame.Bounds(), frame, frame.Bounds().Min, draw.Over)
		draw.ApproxBiLinear.Scale(scaled, bounds, canvas, plan.crop, draw.Src, nil)
		pal := append(color.Palette(nil), frame.Palette...)
		if len(pal) < 256 {
			pal = append(pal, color.Transparent)
		}
		p := image.NewPaletted(bounds, pal)
		draw.FloydSteinberg.Draw(p, bounds, scaled, image.Point{})
		out.Image = append(out.Image, p)
		delay := 10
		if i < len(g.Delay) {
			delay = g.Delay[i]
		}
		out.Delay = append(out.Delay, delay)
		// Every output frame is a whole picture: clear it before the next.
		out.Disposal = append(out.Disposal, gif.DisposalBackground)
		switch disposal {
		case gif.DisposalBackground:
			draw.Draw(canvas, frame.Bounds(), image.Transparent, image.Point{}, draw.Src)
		case gif.DisposalPrevious:
			canvas, previous = previous, nil
		}
	}
	return out
}
