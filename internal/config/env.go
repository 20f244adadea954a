package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// option is one leaf of the configuration tree.
type option struct {
	path  string // YAML path, e.g. federation.listen
	env   string // environment variable
	doc   string
	field reflect.Value
}

// options walks the configuration tree and returns every leaf option in
// declaration order. v must be a pointer to a struct.
func options(v any) []option {
	var out []option
	var walk func(prefix string, rv reflect.Value)
	walk = func(prefix string, rv reflect.Value) {
		rt := rv.Type()
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			path := name
			if prefix != "" {
				path = prefix + "." + name
			}
			fv := rv.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(path, fv)
				continue
			}
			env := f.Tag.Get("env")
			if env == "" {
				env = "PALPO_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
			}
			out = append(out, option{path: path, env: env, doc: f.Tag.Get("doc"), field: fv})
		}
	}
	walk("", reflect.ValueOf(v).Elem())
	return out
}

// applyEnv sets every option whose environment variable is present.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	for _, o := range options(cfg) {
		val, ok := env[o.env]
		if !ok {
			continue
		}
		if err := setValue(o.field, val); err != nil {
			return fmt.Errorf("config: %s (from %s): %v", o.path, o.env, err)
		}
	}
	return nil
}

func setValue(f reflect.Value, s string) error {
	switch f.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 1h", s)
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		f.SetFloat(n)
	default:
		return fmt.Errorf("unsupported option type %s", f.Kind())
	}
	return nil
}
