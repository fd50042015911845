package translate

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// checkShape walks the decoded JSON value v against Go type t and reports, at
// their field paths, keys t has no field for and values of the wrong JSON type.
// encoding/json would ignore the first and report only the first of the second.
func checkShape(c *check, v any, t reflect.Type, path, apiVersion string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil || t == reflect.TypeFor[json.RawMessage]() || t.Kind() == reflect.Interface {
		return
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return // decodes itself (a timestamp, say); json.Unmarshal reports its errors
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			c.errorf(path, "want an object, got %s", describe(v))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			ft, ok := fields[k]
			if !ok {
				c.errorf(join(path, k), "unknown field%s: remove it or check the apiVersion (this is %s %s)", didYouMean(k, fields), apiVersion, c.kind)
				continue
			}
			checkShape(c, m[k], ft, join(path, k), apiVersion)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			c.errorf(path, "want an object, got %s", describe(v))
			return
		}
		for _, k := range sortedKeys(m) {
			checkShape(c, m[k], t.Elem(), fmt.Sprintf("%s[%q]", path, k), apiVersion)
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			c.errorf(path, "want a list, got %s", describe(v))
			return
		}
		for i, e := range l {
			checkShape(c, e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), apiVersion)
		}
	case reflect.String:
		switch v.(type) {
		case string:
		case json.Number, bool:
			c.errorf(path, "want a string, got %s: quote it", describe(v))
		default:
			c.errorf(path, "want a string, got %s", describe(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			c.errorf(path, "want true or false, got %s", describe(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		checkInteger(c, v, path, func(s string) error {
			_, err := strconv.ParseInt(s, 10, t.Bits())
			return err
		})
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		checkInteger(c, v, path, func(s string) error {
			_, err := strconv.ParseUint(s, 10, t.Bits())
			return err
		})
	case reflect.Float32, reflect.Float64:
		if _, ok := v.(json.Number); !ok {
			c.errorf(path, "want a number, got %s", describe(v))
		}
	default:
		c.errorf(path, "cannot check a value of Go type %s", t)
	}
}

func checkInteger(c *check, v any, path string, parse func(string) error) {
	switch v := v.(type) {
	case json.Number:
		err := parse(v.String())
		switch {
		case err == nil:
		case strings.ContainsAny(v.String(), ".eE"):
			c.errorf(path, "want a whole number, got %s", v)
		default:
			c.errorf(path, "%s is out of range", v)
		}
	case string:
		if parse(v) == nil {
			c.errorf(path, "want a number, got %s: remove the quotes", describe(v))
			return
		}
		c.errorf(path, "want a number, got %s", describe(v))
	default:
		c.errorf(path, "want a number, got %s", describe(v))
	}
}

// jsonFields maps the JSON names of struct t's fields to their types, with the
// fields of untagged embedded structs inlined, as encoding/json does.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, ok := out[k]; !ok {
						out[k] = v
					}
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = ft
	}
	return out
}

// didYouMean suggests the field k differs from only in case, if any.
func didYouMean(k string, fields map[string]reflect.Type) string {
	for name := range fields {
		if strings.EqualFold(name, k) {
			return fmt.Sprintf(" %q (did you mean %q?)", k, name)
		}
	}
	return fmt.Sprintf(" %q", k)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// setFields lists the paths of the leaf values set in v, read against Go type t:
// objects that map to structs are walked into, everything else is a leaf. Nulls,
// empty objects and empty lists set nothing.
func setFields(v any, t reflect.Type, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch v := v.(type) {
	case nil:
		return
	case map[string]any:
		if len(v) == 0 {
			return
		}
	case []any:
		if len(v) == 0 {
			return
		}
	}
	if m, ok := v.(map[string]any); ok && t.Kind() == reflect.Struct {
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			if ft, ok := fields[k]; ok {
				setFields(m[k], ft, join(path, k), out)
			}
		}
		return
	}
	*out = append(*out, path)
}
