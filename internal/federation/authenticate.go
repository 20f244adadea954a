package federation

import "net/http"

// Authenticate checks the X-Matrix authorization of a request to an
// endpoint registered outside Handle — one that streams its answer, such as
// the media download endpoints — and returns the origin server. A refused
// request gets a 401 M_UNAUTHORIZED *httpx.Error. The caller bounds the
// body; it can be read again afterwards.
func (f *Federation) Authenticate(r *http.Request) (string, error) { return f.authenticate(r) }
