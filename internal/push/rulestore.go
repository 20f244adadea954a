package push

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	syncapi "github.com/palpo-go/palpo/internal/sync"
)

// Push rule storage: push_rules holds the user-defined rules (priority
// orders each kind, higher first), push_rule_defaults the user's changes
// to server-default rules (enabled, actions). The whole ruleset is also
// published as the m.push_rules account data event, which /sync carries.

// loadOwn reads a user's own rules, each kind's in priority order, and
// their changes to server-default rules.
func loadOwn(ctx context.Context, q querier, userID string) ([]userRule, map[string]defaultChange, error) {
	rows, err := q.Query(ctx, `SELECT kind, rule_id, conditions, pattern, actions, enabled FROM push_rules
		WHERE user_id = $1 ORDER BY kind, priority DESC`, userID)
	if err != nil {
		return nil, nil, fmt.Errorf("push rules: %w", err)
	}
	var own []userRule
	for rows.Next() {
		var r userRule
		var conds sql.NullString
		var actions string
		if err := rows.Scan(&r.Kind, &r.RuleID, &conds, &r.Pattern, &actions, &r.Enabled); err != nil {
			rows.Close()
			return nil, nil, err
		}
		if conds.Valid {
			r.Conditions = json.RawMessage(conds.String)
		}
		r.Actions = json.RawMessage(actions)
		own = append(own, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	rows, err = q.Query(ctx, `SELECT rule_id, enabled, actions FROM push_rule_defaults WHERE user_id = $1`, userID)
	if err != nil {
		return nil, nil, fmt.Errorf("push rule defaults: %w", err)
	}
	defer rows.Close()
	changes := map[string]defaultChange{}
	for rows.Next() {
		var id string
		var c defaultChange
		var actions sql.NullString
		if err := rows.Scan(&id, &c.Enabled, &actions); err != nil {
			return nil, nil, err
		}
		if actions.Valid {
			c.Actions = json.RawMessage(actions.String)
		}
		changes[id] = c
	}
	return own, changes, rows.Err()
}

// ruleset returns a user's whole ruleset.
func (s *Service) ruleset(ctx context.Context, userID string) (*Ruleset, error) {
	own, changes, err := loadOwn(ctx, s.db, userID)
	if err != nil {
		return nil, err
	}
	return buildRuleset(userID, own, changes), nil
}

// editRules runs a change to a user's rules in a transaction, then drops
// the compiled rules and publishes the new ruleset as account data. A
// per-user lock keeps the published rulesets in the order of the changes.
func (s *Service) editRules(ctx context.Context, userID string, fn func(tx *db.Tx) error) error {
	v, _ := s.ruleMu.LoadOrStore(userID, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	defer mu.Unlock()
	if err := s.db.WriteTx(ctx, fn); err != nil {
		return err
	}
	s.forgetUser(userID)
	return s.publishRules(ctx, userID)
}

// publishRules stores the user's ruleset as the m.push_rules account data
// event (which wakes their /sync).
func (s *Service) publishRules(ctx context.Context, userID string) error {
	rs, err := s.ruleset(ctx, userID)
	if err != nil {
		return err
	}
	content, err := json.Marshal(map[string]*Ruleset{"global": rs})
	if err != nil {
		return err
	}
	return s.accounts.SetAccountData(ctx, userID, "", "m.push_rules", content)
}

// loadKind reads a user's own rules of one kind, most important first.
func loadKind(ctx context.Context, tx *db.Tx, userID, kind string) ([]userRule, error) {
	own, _, err := loadOwn(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	var out []userRule
	for _, r := range own {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out, nil
}

// writeKind replaces a user's rules of one kind with list, in order.
func writeKind(ctx context.Context, tx *db.Tx, userID, kind string, list []userRule) error {
	if _, err := tx.Exec(ctx, `DELETE FROM push_rules WHERE user_id = $1 AND kind = $2`, userID, kind); err != nil {
		return err
	}
	for i, r := range list {
		var conds any
		if r.Conditions != nil {
			conds = string(r.Conditions)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern, actions, enabled)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			userID, kind, r.RuleID, len(list)-i, conds, r.Pattern, string(r.Actions), r.Enabled); err != nil {
			return fmt.Errorf("store push rule: %w", err)
		}
	}
	return nil
}

// putRule creates or replaces a user rule. A new rule is enabled and, with
// no before or after, the most important of its kind; a replaced rule
// keeps its enabled state and, with no before or after, its place.
func putRule(ctx context.Context, tx *db.Tx, userID string, r userRule, before, after string) error {
	list, err := loadKind(ctx, tx, userID, r.Kind)
	if err != nil {
		return err
	}
	idx := indexOf(list, r.RuleID)
	if idx >= 0 {
		r.Enabled = list[idx].Enabled
	}
	anchor := before
	if anchor == "" {
		anchor = after
	}
	switch {
	case anchor != "":
		if defaultByID[anchor] != nil {
			return httpx.InvalidParam("A rule cannot be placed relative to the server-default rule %s", anchor)
		}
		if idx >= 0 {
			list = append(list[:idx], list[idx+1:]...)
		}
		at := indexOf(list, anchor)
		if at < 0 {
			return httpx.NewError(400, "M_UNKNOWN", "before/after rule not found: %s", anchor)
		}
		if before == "" {
			at++ // after: the next less important rule
		}
		list = append(list[:at], append([]userRule{r}, list[at:]...)...)
	case idx >= 0:
		list[idx] = r
	default:
		list = append([]userRule{r}, list...)
	}
	return writeKind(ctx, tx, userID, r.Kind, list)
}

func indexOf(list []userRule, ruleID string) int {
	for i, r := range list {
		if r.RuleID == ruleID {
			return i
		}
	}
	return -1
}

// errRuleNotFound is the answer for a rule that does not exist.
var errRuleNotFound = httpx.NotFound("The push rule was not found.")

// setAttr changes the enabled flag or the actions of a rule: a user rule's
// row, or the user's change to a server-default rule.
func setAttr(ctx context.Context, tx *db.Tx, userID, kind, ruleID, attr string, value any) error {
	if isDefaultID(kind, ruleID) {
		q := `INSERT INTO push_rule_defaults (user_id, rule_id, enabled) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, rule_id) DO UPDATE SET enabled = excluded.enabled`
		if attr == "actions" {
			q = `INSERT INTO push_rule_defaults (user_id, rule_id, actions) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, rule_id) DO UPDATE SET actions = excluded.actions`
		}
		_, err := tx.Exec(ctx, q, userID, ruleID, value)
		return err
	}
	q := `UPDATE push_rules SET enabled = $1 WHERE user_id = $2 AND kind = $3 AND rule_id = $4`
	if attr == "actions" {
		q = `UPDATE push_rules SET actions = $1 WHERE user_id = $2 AND kind = $3 AND rule_id = $4`
	}
	res, err := tx.Exec(ctx, q, value, userID, kind, ruleID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errRuleNotFound
	}
	return nil
}

// SyncExtension adds the m.push_rules account data event to initial syncs
// of users who never changed their rules (changed rules are stored as
// account data and come with it).
func (s *Service) SyncExtension(ctx context.Context, rq *syncapi.Request, resp *syncapi.Response) error {
	if !rq.Initial {
		return nil
	}
	if f := rq.Filter; f != nil && f.AccountData != nil && !f.AccountData.Allows("m.push_rules", "") {
		return nil
	}
	if resp.AccountData != nil {
		for _, ev := range resp.AccountData.Events {
			var head struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(ev, &head) == nil && head.Type == "m.push_rules" {
				return nil
			}
		}
	}
	rs, err := s.ruleset(ctx, rq.UserID)
	if err != nil {
		return err
	}
	b, err := json.Marshal(map[string]any{"type": "m.push_rules", "content": map[string]*Ruleset{"global": rs}})
	if err != nil {
		return err
	}
	if resp.AccountData == nil {
		resp.AccountData = &syncapi.EventList{}
	}
	resp.AccountData.Events = append(resp.AccountData.Events, b)
	return nil
}

// compactJSON is raw without insignificant white space.
func compactJSON(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}
