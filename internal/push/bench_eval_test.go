package push

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkEvaluate100 measures rule evaluation alone: one message in a
// 100-member room evaluated for the 99 members who did not send it, each
// with the default ruleset compiled once.
func BenchmarkEvaluate100(b *testing.B) {
	rc := &roomCtx{lowerNames: map[string]string{}, creators: map[string]bool{}}
	rc.levels.Defaults()
	rules := map[string]*compiledRules{}
	for i := 0; i < 100; i++ {
		u := fmt.Sprintf("@user%d:example.org", i)
		rc.local = append(rc.local, u)
		rc.lowerNames[u] = fmt.Sprintf("user %d", i)
		rules[u] = compileRuleset(buildRuleset(u, nil, nil))
	}
	rc.memberCount = len(rc.local)
	sender := rc.local[0]
	content := []byte(`{"msgtype":"m.text","body":"Did anyone see the game last night? user42 was there","m.mentions":{"user_ids":["@user7:example.org"]}}`)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	notified := 0
	for i := 0; i < b.N; i++ {
		ev := newEvalEvent("!room:example.org", "$ev", "m.room.message", sender, nil, 1, content)
		for _, u := range rc.local[1:] {
			if a := rules[u].evaluate(ev, rc.view(u)); a != nil && a.notify {
				notified++
			}
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	if notified != 99*b.N {
		b.Fatalf("%d notifications, want %d", notified, 99*b.N)
	}
}
