package httpx

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Limiter is a set of token buckets, one per key (a user ID or an IP
// address). A nil *Limiter allows everything, which is how rate limiting is
// switched off.
type Limiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewLimiter returns a limiter allowing perSecond sustained requests per key
// with bursts of burst.
func NewLimiter(perSecond float64, burst int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{rate: perSecond, burst: float64(burst), buckets: map[string]*bucket{}}
}

// Allow takes a token for key; if none is left it returns how long to wait.
func (l *Limiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		l.gc(now)
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens += now.Sub(b.last).Seconds() * l.rate
	if b.tokens > l.burst {
		b.tokens = l.burst
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	if l.rate <= 0 {
		return false, time.Hour
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// Check is Allow as a Matrix error: nil, or 429 M_LIMIT_EXCEEDED.
func (l *Limiter) Check(key string) error {
	if ok, retry := l.Allow(key); !ok {
		return LimitExceeded(retry)
	}
	return nil
}

// gc drops buckets that have refilled completely; they carry no state.
func (l *Limiter) gc(now time.Time) {
	l.sweep = now
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// ClientIP is the remote address of the request without its port.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
