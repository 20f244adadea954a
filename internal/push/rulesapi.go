package push

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Push rule endpoints (client-server API, "Push Rules: API"):
//
//	GET    /pushrules/                               the whole ruleset
//	GET    /pushrules/global/                        the global ruleset
//	GET    /pushrules/global/{kind}/                 one kind's rules
//	GET|PUT|DELETE /pushrules/global/{kind}/{ruleId} one rule
//	GET|PUT /pushrules/global/{kind}/{ruleId}/{enabled|actions}

// maxRuleIDBytes bounds rule IDs (room and user IDs fit).
const maxRuleIDBytes = 255

func (s *Service) ruleRoutes(rt *httpx.Router) {
	const base = "/_matrix/client/v3/pushrules/"
	rt.Authed("GET "+base+"{$}", s.handleGetRules)
	rt.Authed("GET "+base+"{scope}/{$}", s.handleGetScope)
	rt.Authed("GET "+base+"{scope}/{kind}/{$}", s.handleGetKind)
	rt.Authed("GET "+base+"{scope}/{kind}/{ruleId}", s.handleGetRule)
	rt.Authed("PUT "+base+"{scope}/{kind}/{ruleId}", s.handlePutRule)
	rt.Authed("DELETE "+base+"{scope}/{kind}/{ruleId}", s.handleDeleteRule)
	rt.Authed("GET "+base+"{scope}/{kind}/{ruleId}/{attr}", s.handleGetAttr)
	rt.Authed("PUT "+base+"{scope}/{kind}/{ruleId}/{attr}", s.handlePutAttr)
}

// checkScope refuses scopes other than global (the only one the spec
// defines).
func checkScope(r *http.Request) error {
	if sc := r.PathValue("scope"); sc != "global" {
		return httpx.InvalidParam("Unknown push rule scope %q", sc)
	}
	return nil
}

// rulePath parses the scope, kind and (when the route has one) the rule ID.
func rulePath(r *http.Request) (kind, ruleID string, err error) {
	if err := checkScope(r); err != nil {
		return "", "", err
	}
	kind = r.PathValue("kind")
	if !validKind(kind) {
		return "", "", httpx.InvalidParam("Unknown push rule kind %q", kind)
	}
	return kind, r.PathValue("ruleId"), nil
}

// checkAttr refuses rule attributes other than enabled and actions.
func checkAttr(r *http.Request) (string, error) {
	attr := r.PathValue("attr")
	if attr != "enabled" && attr != "actions" {
		return "", httpx.InvalidParam("Unknown push rule attribute %q", attr)
	}
	return attr, nil
}

func (s *Service) handleGetRules(r *http.Request, p *httpx.Principal) (any, error) {
	rs, err := s.ruleset(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]*Ruleset{"global": rs}, nil
}

func (s *Service) handleGetScope(r *http.Request, p *httpx.Principal) (any, error) {
	if err := checkScope(r); err != nil {
		return nil, err
	}
	return s.ruleset(r.Context(), p.UserID)
}

func (s *Service) handleGetKind(r *http.Request, p *httpx.Principal) (any, error) {
	kind, _, err := rulePath(r)
	if err != nil {
		return nil, err
	}
	rs, err := s.ruleset(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	return rs.Kind(kind), nil
}

// findRule returns one of the user's rules, or 404.
func (s *Service) findRule(r *http.Request, p *httpx.Principal) (*Rule, error) {
	kind, ruleID, err := rulePath(r)
	if err != nil {
		return nil, err
	}
	rs, err := s.ruleset(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	rule := rs.Find(kind, ruleID)
	if rule == nil {
		return nil, errRuleNotFound
	}
	return rule, nil
}

func (s *Service) handleGetRule(r *http.Request, p *httpx.Principal) (any, error) {
	return s.findRule(r, p)
}

func (s *Service) handleGetAttr(r *http.Request, p *httpx.Principal) (any, error) {
	attr, err := checkAttr(r)
	if err != nil {
		return nil, err
	}
	rule, err := s.findRule(r, p)
	if err != nil {
		return nil, err
	}
	if attr == "enabled" {
		return map[string]bool{"enabled": rule.Enabled}, nil
	}
	return map[string]json.RawMessage{"actions": rule.Actions}, nil
}

func (s *Service) handlePutRule(r *http.Request, p *httpx.Principal) (any, error) {
	// The body is read first: a body that is not JSON (or too large) gets
	// its own error whatever the path says.
	var body struct {
		Actions    json.RawMessage `json:"actions"`
		Conditions json.RawMessage `json:"conditions"`
		Pattern    json.RawMessage `json:"pattern"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	kind, ruleID, err := rulePath(r)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasPrefix(ruleID, "."):
		return nil, httpx.InvalidParam("Rule IDs starting with '.' are reserved for server-default rules")
	case strings.ContainsAny(ruleID, `/\`):
		return nil, httpx.InvalidParam("Rule IDs may not contain slashes or backslashes")
	case len(ruleID) > maxRuleIDBytes:
		return nil, httpx.InvalidParam("Rule IDs are at most %d bytes long", maxRuleIDBytes)
	}
	rule := userRule{Kind: kind, RuleID: ruleID, Enabled: true}
	if rule.Actions, err = checkActions(body.Actions); err != nil {
		return nil, err
	}
	switch kind {
	case KindOverride, KindUnderride:
		if rule.Conditions, err = checkConditions(body.Conditions); err != nil {
			return nil, err
		}
	case KindContent:
		var pattern *string
		if isNull(body.Pattern) {
			return nil, httpx.MissingParam("Content rules need a pattern")
		}
		if json.Unmarshal(body.Pattern, &pattern) != nil {
			return nil, httpx.BadJSON("pattern must be a string")
		}
		rule.Pattern = pattern
	}
	q := r.URL.Query()
	err = s.editRules(r.Context(), p.UserID, func(tx *db.Tx) error {
		return putRule(r.Context(), tx, p.UserID, rule, q.Get("before"), q.Get("after"))
	})
	if err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

func (s *Service) handleDeleteRule(r *http.Request, p *httpx.Principal) (any, error) {
	kind, ruleID, err := rulePath(r)
	if err != nil {
		return nil, err
	}
	if isDefaultID(kind, ruleID) {
		return nil, httpx.InvalidParam("Server-default rules cannot be deleted; disable them instead")
	}
	err = s.editRules(r.Context(), p.UserID, func(tx *db.Tx) error {
		res, err := tx.Exec(r.Context(), `DELETE FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3`, p.UserID, kind, ruleID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errRuleNotFound
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

func (s *Service) handlePutAttr(r *http.Request, p *httpx.Principal) (any, error) {
	var body struct {
		Enabled json.RawMessage `json:"enabled"`
		Actions json.RawMessage `json:"actions"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	attr, err := checkAttr(r)
	if err != nil {
		return nil, err
	}
	kind, ruleID, err := rulePath(r)
	if err != nil {
		return nil, err
	}
	var value any
	if attr == "enabled" {
		var enabled bool
		if isNull(body.Enabled) {
			return nil, httpx.MissingParam("Missing enabled")
		}
		if json.Unmarshal(body.Enabled, &enabled) != nil {
			return nil, httpx.BadJSON("enabled must be a boolean")
		}
		value = enabled
	} else {
		actions, err := checkActions(body.Actions)
		if err != nil {
			return nil, err
		}
		value = string(actions)
	}
	err = s.editRules(r.Context(), p.UserID, func(tx *db.Tx) error {
		return setAttr(r.Context(), tx, p.UserID, kind, ruleID, attr, value)
	})
	if err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// isNull reports whether a field is absent or null.
func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// checkActions validates an actions array: "notify", the historical
// "dont_notify" and "coalesce" (kept as sent, ignored when evaluating), and
// set_tweak objects.
func checkActions(raw json.RawMessage) (json.RawMessage, error) {
	if isNull(raw) {
		return nil, httpx.MissingParam("Missing actions")
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return nil, httpx.BadJSON("actions must be an array")
	}
	for _, item := range list {
		var name string
		if json.Unmarshal(item, &name) == nil {
			switch name {
			case "notify", "dont_notify", "coalesce":
				continue
			}
			return nil, httpx.InvalidParam("Unrecognised action %q", name)
		}
		var tweak struct {
			SetTweak *string `json:"set_tweak"`
		}
		if json.Unmarshal(item, &tweak) != nil || tweak.SetTweak == nil {
			return nil, httpx.InvalidParam("Unrecognised action %s", item)
		}
	}
	return compactJSON(raw), nil
}

// checkConditions validates a conditions array: objects with a kind.
// Unknown kinds are kept (they never match); absent conditions are none.
func checkConditions(raw json.RawMessage) (json.RawMessage, error) {
	if isNull(raw) {
		return json.RawMessage(`[]`), nil
	}
	var list []map[string]json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return nil, httpx.BadJSON("conditions must be an array of objects")
	}
	for _, c := range list {
		var kind string
		if json.Unmarshal(c["kind"], &kind) != nil || kind == "" {
			return nil, httpx.BadJSON("Every condition needs a kind")
		}
	}
	return compactJSON(raw), nil
}
