package httpx

import "net/http"

// CheckRequestText applies the router's check of JSON endpoints to a
// handler registered with Raw: a path or query holding a NUL character or
// invalid UTF-8 is 400 M_INVALID_PARAM.
func CheckRequestText(r *http.Request) error { return checkRequestText(r) }
