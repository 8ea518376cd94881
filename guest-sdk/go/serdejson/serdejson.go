// Package serdejson reads and writes JSON text exactly as Rust's serde_json
// does with its default features: objects with their keys sorted (its Map
// is a BTreeMap), numbers as serde_json normalises them (integers that fit
// u64/i64 verbatim, other numbers as the shortest f64 text: "1.0", "1e+16"),
// strings escaped as serde_json escapes them (no HTML escaping, no \u2028).
//
// A Go processor that must return or store byte-for-byte what a Rust
// processor does (the example plugins, compared by one conformance suite)
// decodes with [Parse] and encodes with [Marshal]; ordinary processors can
// use encoding/json.
package serdejson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Object is a JSON object whose members are written in this order (a Rust
// struct's fields); a map[string]any is written with sorted keys.
type Object []Member

// Member is one key and value of an [Object].
type Member struct {
	Key   string
	Value any
}

// Parse decodes JSON text into nil, bool, json.Number, string, []any and
// map[string]any. Numbers keep their text until [Marshal] normalises them.
func Parse(text string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("trailing characters after the JSON value")
	}
	return v, nil
}

// Marshal encodes v as serde_json's to_string would encode the equivalent
// serde_json::Value. v may hold nil, bool, string, json.Number, float64,
// the integer types, []any, map[string]any and [Object], nested.
func Marshal(v any) (string, error) {
	var b bytes.Buffer
	if err := write(&b, v); err != nil {
		return "", err
	}
	return b.String(), nil
}

func write(b *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if v {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case string:
		writeString(b, v)
	case json.Number:
		s, err := Number(string(v))
		if err != nil {
			return err
		}
		b.WriteString(s)
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b.WriteString("null") // as serde_json writes non-finite floats
		} else {
			b.WriteString(formatF64(v))
		}
	case int:
		b.WriteString(strconv.FormatInt(int64(v), 10))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case int32:
		b.WriteString(strconv.FormatInt(int64(v), 10))
	case uint:
		b.WriteString(strconv.FormatUint(uint64(v), 10))
	case uint64:
		b.WriteString(strconv.FormatUint(v, 10))
	case uint32:
		b.WriteString(strconv.FormatUint(uint64(v), 10))
	case []any:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := write(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys) // byte order, as Rust's String Ord
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			if err := write(b, v[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case Object:
		b.WriteByte('{')
		for i, m := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, m.Key)
			b.WriteByte(':')
			if err := write(b, m.Value); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("serdejson: cannot encode %T", v)
	}
	return nil
}

// writeString escapes as serde_json's format_escaped_str: ", \ and the
// control characters below U+0020 (\b \t \n \f \r short, others \u00xx).
func writeString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		var esc string
		switch {
		case c == '"':
			esc = `\"`
		case c == '\\':
			esc = `\\`
		case c == '\b':
			esc = `\b`
		case c == '\t':
			esc = `\t`
		case c == '\n':
			esc = `\n`
		case c == '\f':
			esc = `\f`
		case c == '\r':
			esc = `\r`
		case c < 0x20:
			esc = `\u00` + string(hex[c>>4]) + string(hex[c&0xf])
		default:
			continue
		}
		b.WriteString(s[start:i])
		b.WriteString(esc)
		start = i + 1
	}
	b.WriteString(s[start:])
	b.WriteByte('"')
}

// Number normalises a JSON number literal as serde_json does when it
// parses it into a Value and writes it back: an integer that fits u64
// (non-negative) or i64 (negative) stays an integer; anything else ("-0",
// fractions, exponents, huge integers) becomes an f64 written by ryu.
func Number(lit string) (string, error) {
	s, _, err := number(lit)
	return s, err
}

// number is [Number], and whether serde_json reads lit as an integer (u64
// or i64) rather than as an f64.
func number(lit string) (s string, integer bool, err error) {
	if !strings.ContainsAny(lit, ".eE") {
		if strings.HasPrefix(lit, "-") {
			if lit != "-0" {
				if n, err := strconv.ParseInt(lit, 10, 64); err == nil {
					return strconv.FormatInt(n, 10), true, nil
				}
			}
		} else if n, err := strconv.ParseUint(lit, 10, 64); err == nil {
			return strconv.FormatUint(n, 10), true, nil
		}
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return "", false, fmt.Errorf("number out of range: %s", lit)
	}
	return formatF64(f), false, nil
}

// formatF64 writes a finite f64 as serde_json does: the shortest
// round-tripping digits, in plain notation (with ".0" for integers) when
// 10^-5 <= |f| < 10^16, else d.ddde+N / d.ddde-N.
func formatF64(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	sign := ""
	if f < 0 {
		sign = "-"
	}
	s := strconv.FormatFloat(math.Abs(f), 'e', -1, 64) // d.ddde±xx
	mant, exp, _ := strings.Cut(s, "e")
	digits := strings.Replace(mant, ".", "", 1)
	e, _ := strconv.Atoi(exp)
	length := len(digits)
	kk := e + 1 // 10^(kk-1) <= |f| < 10^kk
	k := kk - length
	switch {
	case 0 <= k && kk <= 16:
		return sign + digits + strings.Repeat("0", k) + ".0"
	case 0 < kk && kk <= 16:
		return sign + digits[:kk] + "." + digits[kk:]
	case -5 < kk && kk <= 0:
		return sign + "0." + strings.Repeat("0", -kk) + digits
	case length == 1:
		return sign + digits + exponent(kk-1)
	default:
		return sign + digits[:1] + "." + digits[1:] + exponent(kk-1)
	}
}

// exponent is "e+N" or "e-N", as serde_json 1.0.154 writes it.
func exponent(e int) string {
	if e < 0 {
		return "e" + strconv.Itoa(e)
	}
	return "e+" + strconv.Itoa(e)
}

// Describe names a value [Parse] returned the way serde_json's errors do
// ("invalid type: string \"three\", expected u32"), so a Go processor that
// checks its input by hand refuses bad data with a Rust processor's words.
// Numbers are named as serde_json reads them: "integer `3`" for what fits
// u64 or i64, else "floating point `1.5`" (`3.0`, `-0.0`, `1e+20`: the f64
// as serde_json writes it).
func Describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean `%v`", v)
	case json.Number:
		s, integer, err := number(string(v))
		switch {
		case err != nil:
			return "floating point `" + string(v) + "`"
		case integer:
			return "integer `" + s + "`"
		default:
			return "floating point `" + s + "`"
		}
	case float64:
		return "floating point `" + formatF64(v) + "`"
	case int, int64, int32, uint, uint64, uint32:
		return fmt.Sprintf("integer `%d`", v)
	case string:
		return fmt.Sprintf("string %q", v)
	case []any:
		return "sequence"
	default:
		return "map"
	}
}
