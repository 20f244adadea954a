package httpx

import (
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Recover turns a panic in h into a logged 500 M_UNKNOWN; the process lives on.
func Recover(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				slog.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				WriteJSON(w, http.StatusInternalServerError, Unknown("Internal server error").body())
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush passes flushes through (streaming responses).
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap exposes the wrapped writer to http.ResponseController.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Instrument logs each request at debug level and, when reg is not nil,
// counts requests and their durations per route pattern in Prometheus.
func Instrument(h http.Handler, reg prometheus.Registerer) http.Handler {
	var requests *prometheus.CounterVec
	var durations *prometheus.HistogramVec
	if reg != nil {
		requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palpo_http_requests_total", Help: "HTTP requests by route pattern and status code.",
		}, []string{"pattern", "code"})
		durations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "palpo_http_request_duration_seconds", Help: "HTTP request durations by route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"pattern"})
		reg.MustRegister(requests, durations)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		d := time.Since(start)
		pattern := r.Pattern
		if pattern == "" {
			pattern = "unmatched"
		}
		if requests != nil {
			requests.WithLabelValues(pattern, strconv.Itoa(sw.status)).Inc()
			durations.WithLabelValues(pattern).Observe(d.Seconds())
		}
		slog.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", d, "remote", r.RemoteAddr)
	})
}
