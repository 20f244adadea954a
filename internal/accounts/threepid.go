package accounts

import (
	"net/http"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Third-party identifiers (client-server spec, "Adding Account
// Administrative Contact Information"). Palpo stores no e-mail addresses or
// phone numbers, sends no validation messages and talks to no identity
// server; the m.3pid_changes capability says so. Every endpoint still exists
// and checks its request, then answers with the error the spec (or, where the
// spec is silent, Synapse with enable_3pid_changes off) gives:
//
//   - GET /account/3pid: an empty list.
//   - POST /account/3pid, /3pid/add, /3pid/delete: 400 M_FORBIDDEN, as Synapse.
//   - POST /account/3pid/bind: 400 M_SERVER_NOT_TRUSTED, the spec's code for
//     an identity server the homeserver does not work with.
//   - POST /account/3pid/unbind: 200 with id_server_unbind_result
//     "no-support", the spec's answer when the homeserver cannot unbind.
//   - POST /account/3pid/{email,msisdn}/requestToken: 400
//     M_THREEPID_MEDIUM_NOT_SUPPORTED, which the spec lists for a homeserver
//     that does not support adding that medium.
//   - POST /account/password/{email,msisdn}/requestToken: 400
//     M_THREEPID_NOT_FOUND: no account has that address.

var (
	errThreepidChanges  = httpx.NewError(http.StatusBadRequest, "M_FORBIDDEN", "Third-party identifier changes are disabled on this server")
	errNoIdentityServer = httpx.NewError(http.StatusBadRequest, "M_SERVER_NOT_TRUSTED", "This server does not work with identity servers")
	errMediumNotSupp    = httpx.NewError(http.StatusBadRequest, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "This server does not verify third-party identifiers")
	errThreepidNotFound = httpx.NewError(http.StatusBadRequest, "M_THREEPID_NOT_FOUND", "No account has this third-party identifier")
)

// threepidEndpoint is one POST endpoint: its path under /account, whether it
// needs an access token, the body fields the spec requires and the answer.
type threepidEndpoint struct {
	path     string
	authed   bool
	required []string
	answer   func() (any, error)
}

func refuse(err error) func() (any, error) { return func() (any, error) { return nil, err } }

var (
	emailTokenFields  = []string{"client_secret", "email", "send_attempt"}
	msisdnTokenFields = []string{"client_secret", "country", "phone_number", "send_attempt"}
)

var threepidEndpoints = []threepidEndpoint{
	{"/3pid", true, []string{"three_pid_creds"}, refuse(errThreepidChanges)},
	{"/3pid/add", true, []string{"client_secret", "sid"}, refuse(errThreepidChanges)},
	{"/3pid/delete", true, []string{"medium", "address"}, refuse(errThreepidChanges)},
	{"/3pid/bind", true, []string{"client_secret", "id_server", "id_access_token", "sid"}, refuse(errNoIdentityServer)},
	{"/3pid/unbind", true, []string{"medium", "address"}, func() (any, error) {
		return map[string]string{"id_server_unbind_result": "no-support"}, nil
	}},
	{"/3pid/email/requestToken", false, emailTokenFields, refuse(errMediumNotSupp)},
	{"/3pid/msisdn/requestToken", false, msisdnTokenFields, refuse(errMediumNotSupp)},
	{"/password/email/requestToken", false, emailTokenFields, refuse(errThreepidNotFound)},
	{"/password/msisdn/requestToken", false, msisdnTokenFields, refuse(errThreepidNotFound)},
}

func (s *Service) threepidRoutes(rt *httpx.Router) {
	rt.Authed("GET /_matrix/client/v3/account/3pid", func(r *http.Request, p *httpx.Principal) (any, error) {
		return map[string]any{"threepids": []any{}}, nil
	})
	for _, e := range threepidEndpoints {
		h := func(r *http.Request) (any, error) {
			if err := checkThreepidBody(r, e.required); err != nil {
				return nil, err
			}
			return e.answer()
		}
		pattern := "POST /_matrix/client/v3/account" + e.path
		if e.authed {
			rt.Authed(pattern, func(r *http.Request, _ *httpx.Principal) (any, error) { return h(r) })
		} else {
			rt.Public(pattern, h)
		}
	}
}

// checkThreepidBody checks that the body is a JSON object with the required
// fields, and that a medium, if given, is one the spec knows.
func checkThreepidBody(r *http.Request, required []string) error {
	var body map[string]any
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	for _, f := range required {
		if v, ok := body[f]; !ok || v == nil {
			return httpx.MissingParam("Missing %s", f)
		}
	}
	if m, ok := body["medium"]; ok && m != "email" && m != "msisdn" {
		return httpx.InvalidParam("medium must be email or msisdn")
	}
	return nil
}
