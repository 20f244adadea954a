package media

import (
	"mime"
	"net/http"
	"strings"
)

// Serving untrusted bytes from the homeserver's origin is how media turns
// into cross-site scripting. Every download therefore carries:
//
//   - Content-Disposition: inline only for the types the spec lists as safe
//     to render inline, attachment for everything else;
//   - a Content-Type that is never a script-capable type: HTML, XHTML, SVG,
//     XML and JavaScript are served as application/octet-stream (the spec
//     allows it for a type that is "obviously wrong" to serve; here it is
//     obviously dangerous);
//   - the sandboxing Content-Security-Policy the spec recommends;
//   - X-Content-Type-Options: nosniff, so that browsers do not second-guess
//     the type;
//   - Cross-Origin-Resource-Policy: cross-origin, as the spec asks.

// contentSecurityPolicy is the policy the spec recommends for media.
const contentSecurityPolicy = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

// inlineTypes are the types the spec allows with Content-Disposition: inline.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true, "application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// octetStream is the type of bytes of unknown or refused type.
const octetStream = "application/octet-stream"

// scriptCapable reports whether a browser may run scripts in content of
// the (lower-case, parameter-free) type.
func scriptCapable(base string) bool {
	switch base {
	case "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "text/xsl",
		"application/xslt+xml", "multipart/x-mixed-replace", "application/x-shockwave-flash", "text/x-component":
		return true
	}
	return strings.Contains(base, "script") || strings.HasSuffix(base, "+xml") || strings.Contains(base, "html")
}

// servedType returns the Content-Type to serve for a stored type and
// whether the content may be shown inline.
func servedType(stored string) (ctype string, inline bool) {
	base, params, err := mime.ParseMediaType(stored)
	if err != nil || !strings.Contains(base, "/") || scriptCapable(base) {
		return octetStream, false
	}
	ctype = mime.FormatMediaType(base, params)
	if ctype == "" {
		return octetStream, false
	}
	return ctype, inlineTypes[base]
}

// setDownloadHeaders sets the headers of a download: the safe type, the
// disposition with the file name (if any) and the protective headers.
func setDownloadHeaders(h http.Header, storedType, filename string) {
	ctype, inline := servedType(storedType)
	disposition := "attachment"
	if inline {
		disposition = "inline"
	}
	setSafetyHeaders(h, ctype, disposition, filename)
}

// setSafetyHeaders sets Content-Type, Content-Disposition (with filename
// when not empty) and the protective headers.
func setSafetyHeaders(h http.Header, ctype, disposition, filename string) {
	h.Set("Content-Type", ctype)
	if filename != "" {
		if d := mime.FormatMediaType(disposition, map[string]string{"filename": filename}); d != "" {
			disposition = d
		}
	}
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("Cache-Control", "private, max-age=86400")
}
