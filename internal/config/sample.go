package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sample returns a fully commented YAML configuration file listing every
// option with its default value and its environment variable.
func Sample() string {
	var b strings.Builder
	b.WriteString("# Palpo configuration. Every option is shown with its default.\n")
	b.WriteString("# Each option can also be set by the environment variable named above it.\n\n")
	section := ""
	for _, o := range options(Default()) {
		parent, leaf, nested := strings.Cut(o.path, ".")
		indent := ""
		if nested {
			if parent != section {
				fmt.Fprintf(&b, "%s:\n", parent)
				section = parent
			}
			indent = "  "
		} else {
			leaf, section = parent, ""
		}
		for _, line := range wrap(o.doc, 76) {
			fmt.Fprintf(&b, "%s# %s\n", indent, line)
		}
		fmt.Fprintf(&b, "%s# env: %s\n", indent, o.env)
		fmt.Fprintf(&b, "%s%s: %s\n\n", indent, leaf, yamlScalar(o.field.Interface()))
	}
	return b.String()
}

func yamlScalar(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case time.Duration:
		if x == 0 {
			return "0s"
		}
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
