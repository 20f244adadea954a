package media

import (
	"bufio"
	"bytes"
	"errors"
	"image"
	"image/color/palette"
	"image/gif"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPlanThumbnail(t *testing.T) {
	for _, c := range []struct {
		srcW, srcH, reqW, reqH int
		method                 string
		want                   thumbPlan
	}{
		{1000, 500, 320, 240, "scale", thumbPlan{crop: image.Rect(0, 0, 1000, 500), w: 320, h: 160}},
		{500, 1000, 320, 240, "scale", thumbPlan{crop: image.Rect(0, 0, 500, 1000), w: 120, h: 240}},
		{1000, 500, 32, 32, "crop", thumbPlan{crop: image.Rect(250, 0, 750, 500), w: 32, h: 32}},
		{500, 1000, 96, 48, "crop", thumbPlan{crop: image.Rect(0, 375, 500, 625), w: 96, h: 48}},
		{100, 50, 320, 240, "scale", thumbPlan{original: true}},
		{100, 50, 100, 50, "crop", thumbPlan{original: true}},
		{1000, 500, 100, 1000, "crop", thumbPlan{crop: image.Rect(475, 0, 525, 500), w: 50, h: 500}},
		{5000, 5000, 3000, 3000, "scale", thumbPlan{original: true}}, // beyond maxThumbDim
		{3, 10000, 1, 1, "scale", thumbPlan{crop: image.Rect(0, 0, 3, 10000), w: 1, h: 1}},
	} {
		if got := planThumbnail(c.srcW, c.srcH, c.reqW, c.reqH, c.method); got != c.want {
			t.Errorf("%dx%d asked %dx%d %s: %+v, want %+v", c.srcW, c.srcH, c.reqW, c.reqH, c.method, got, c.want)
		}
	}
}

func TestServedType(t *testing.T) {
	for _, c := range []struct {
		stored, want string
		inline       bool
	}{
		{"image/png", "image/png", true},
		{"IMAGE/PNG", "image/png", true},
		{"text/plain; charset=utf-8", "text/plain; charset=utf-8", true},
		{"application/pdf", "application/pdf", false},
		{"text/html", octetStream, false},
		{"TEXT/HTML; charset=utf-8", octetStream, false},
		{"image/svg+xml", octetStream, false},
		{"application/javascript", octetStream, false},
		{"text/javascript", octetStream, false},
		{"application/atom+xml", octetStream, false},
		{"", octetStream, false},
		{"not a type", octetStream, false},
		{"text/plain; charset", octetStream, false},
	} {
		if got, inline := servedType(c.stored); got != c.want || inline != c.inline {
			t.Errorf("servedType(%q) = %q, %v; want %q, %v", c.stored, got, inline, c.want, c.inline)
		}
	}
}

func gifOf(t *testing.T, frames int) []byte {
	t.Helper()
	g := &gif.GIF{}
	for range frames {
		g.Image = append(g.Image, image.NewPaletted(image.Rect(0, 0, 8, 8), palette.Plan9))
		g.Delay = append(g.Delay, 5)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCountGIFFrames(t *testing.T) {
	for _, n := range []int{1, 2, 7} {
		got, err := countGIFFrames(bufio.NewReader(bytes.NewReader(gifOf(t, n))))
		if err != nil || got != n {
			t.Errorf("%d frames: counted %d, %v", n, got, err)
		}
	}
	if _, err := countGIFFrames(bufio.NewReader(strings.NewReader("PNG not a gif"))); err == nil {
		t.Error("not a GIF: no error")
	}
	truncated := gifOf(t, 3)
	if got, err := countGIFFrames(bufio.NewReader(bytes.NewReader(truncated[:len(truncated)-30]))); err != nil || got < 1 {
		t.Errorf("truncated GIF: %d, %v", got, err)
	}
}

func FuzzCountGIFFrames(f *testing.F) {
	f.Add([]byte("GIF89a"))
	for _, n := range []int{1, 3} {
		g := &gif.GIF{}
		for range n {
			g.Image = append(g.Image, image.NewPaletted(image.Rect(0, 0, 4, 4), palette.Plan9))
			g.Delay = append(g.Delay, 1)
		}
		var b bytes.Buffer
		_ = gif.EncodeAll(&b, g)
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := countGIFFrames(bufio.NewReader(bytes.NewReader(data)))
		if n < 0 || n > maxCountedFrames || (err != nil && n != 0) {
			t.Fatalf("%d frames, %v", n, err)
		}
	})
}

func TestParseHTML(t *testing.T) {
	og := parseHTML(strings.NewReader(`<html><head>
		<meta property="og:title" content="OG title"><title>HTML title</title>
		<meta name="description" content="`+strings.Repeat("d", 600)+`">
		<meta property="OG:Site_Name" content="Site"><meta property="og:empty" content="">
		<meta property="og:title" content="second og:title is ignored">
		</head><body><meta property="og:url" content="https://example.org/"></body></html>`), "text/html")
	if og["og:title"] != "OG title" || og["og:site_name"] != "Site" || og["og:url"] != "https://example.org/" {
		t.Fatalf("%v", og)
	}
	if _, ok := og["og:empty"]; ok {
		t.Fatal("empty property kept")
	}
	if d := og["og:description"]; len([]rune(d)) != maxDescRunes+1 || !strings.HasSuffix(d, "…") {
		t.Fatalf("description of %d runes", len([]rune(d)))
	}
}

func FuzzParseHTML(f *testing.F) {
	f.Add(`<meta property="og:title" content="x"><title>t</title>`, "text/html; charset=utf-8")
	f.Add("<title>\xff\x00</title><meta name=description content=\"\x00\">", "text/html; charset=iso-8859-1")
	f.Fuzz(func(t *testing.T, page, ctype string) {
		og := parseHTML(strings.NewReader(page), ctype)
		if len(og) > maxOGProperties+2 {
			t.Fatalf("%d properties", len(og))
		}
		for k, v := range og {
			if strings.ContainsRune(v, 0) || !strings.HasPrefix(k, "og:") {
				t.Fatalf("%q = %q", k, v)
			}
		}
	})
}

func TestFileStorage(t *testing.T) {
	root := t.TempDir()
	s, err := NewFileStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	const hash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // sha256("hello")
	stage := func(data string) *os.File {
		f, err := s.Stage()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(data); err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := stage("hello")
	if _, err := s.Open(hash); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staged content visible before the commit: %v", err)
	}
	if err := s.Commit(f, hash); err != nil {
		t.Fatal(err)
	}
	// Committing the same bytes again keeps one file and no staged leftover.
	if err := s.Commit(stage("hello"), hash); err != nil {
		t.Fatal(err)
	}
	c, err := s.Open(hash)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(c)
	c.Close()
	if b.String() != "hello" || c.Size() != 5 {
		t.Fatalf("content %q size %d", b.String(), c.Size())
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "tmp")); len(entries) != 0 {
		t.Fatalf("%d staged files left after commits", len(entries))
	}
	for _, bad := range []string{"../../etc/passwd", "ABC", hash[:63], strings.ToUpper(hash)} {
		if _, err := s.Open(bad); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open(%q): %v", bad, err)
		}
		if err := s.Commit(stage("x"), bad); err == nil {
			t.Errorf("Commit(%q) accepted", bad)
		}
	}
	// An interrupted upload leaves a staged file that CleanStaged removes
	// once it is old enough.
	left := stage("partial")
	left.Close()
	if err := s.CleanStaged(time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left.Name()); err != nil {
		t.Fatal("a recent staged file was removed")
	}
	if err := s.CleanStaged(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an old staged file was kept")
	}
	if err := s.Delete(hash); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(hash); err != nil {
		t.Fatalf("deleting missing content: %v", err)
	}
}
