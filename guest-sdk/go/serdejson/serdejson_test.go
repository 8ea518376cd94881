package serdejson

import "testing"

// Expected values are serde_json 1.0.154's own output (Value round trip),
// the version the Rust plugins are built with.
func TestMatchesSerdeJSON(t *testing.T) {
	cases := [][2]string{
		{"0", "0"}, {"-0", "-0.0"}, {"1", "1"}, {"-1", "-1"}, {"1.0", "1.0"},
		{"1.50", "1.5"}, {"2.5", "2.5"}, {"1e3", "1000.0"}, {"1E3", "1000.0"},
		{"1e-7", "1e-7"}, {"0.001234", "0.001234"}, {"0.0001", "0.0001"},
		{"0.00001", "0.00001"}, {"123456789012345678", "123456789012345678"},
		{"18446744073709551615", "18446744073709551615"},
		{"18446744073709551616", "1.8446744073709552e+19"},
		{"-9223372036854775808", "-9223372036854775808"},
		{"-9223372036854775809", "-9.223372036854776e+18"},
		{"1e16", "1e+16"}, {"1e15", "1000000000000000.0"},
		{"12345678901234567", "12345678901234567"}, {"1e300", "1e+300"},
		{"1.7976931348623157e308", "1.7976931348623157e+308"}, {"5e-324", "5e-324"},
		{"123.456e5", "12345600.0"}, {"-2.5e-3", "-0.0025"}, {"0.1", "0.1"},
		{"100", "100"}, {"3.14159", "3.14159"}, {"1e21", "1e+21"}, {"1.5e22", "1.5e+22"},
		{"9007199254740993", "9007199254740993"}, {"-0.0", "-0.0"},
		{`{"b":1,"a":{"z":[1,2.0,{"y":null,"x":true}],"c":"\u2028<>&\u0001\u007f\b\f\n\r\t\"\\/é"}}`,
			"{\"a\":{\"c\":\"\u2028<>&\\u0001\u007f\\b\\f\\n\\r\\t\\\"\\\\/é\",\"z\":[1,2.0,{\"x\":true,\"y\":null}]},\"b\":1}"},
	}
	for _, c := range cases {
		v, err := Parse(c[0])
		if err != nil {
			t.Fatalf("Parse(%s): %v", c[0], err)
		}
		got, err := Marshal(v)
		if err != nil {
			t.Fatalf("Marshal(%s): %v", c[0], err)
		}
		if got != c[1] {
			t.Errorf("%s: got %s, serde_json writes %s", c[0], got, c[1])
		}
	}
}

func TestObjectKeepsOrderAndMapsSort(t *testing.T) {
	got, err := Marshal(Object{{"step", "Second"}, {"childQueue", "q"}, {"rest", map[string]any{"z": 1, "a": []any{uint32(2), 2.5, nil}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"step":"Second","childQueue":"q","rest":{"a":[2,2.5,null],"z":1}}`
	if got != want {
		t.Errorf("got %s want %s", got, want)
	}
}

func TestParseRejects(t *testing.T) {
	for _, bad := range []string{"", "{", "1 2", "[1,]", "1e400"} {
		v, err := Parse(bad)
		if err == nil {
			_, err = Marshal(v)
		}
		if err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestDescribeUsesSerdeWords(t *testing.T) {
	v, err := Parse(`[null, true, 3, -7, 18446744073709551615, 1.5, 3.0, -0, 1e2, 1e-7, 18446744073709551616, "three", [1], {"a": 1}]`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"null", "boolean `true`", "integer `3`", "integer `-7`", "integer `18446744073709551615`",
		"floating point `1.5`", "floating point `3.0`", "floating point `-0.0`", "floating point `100.0`", "floating point `1e-7`",
		"floating point `1.8446744073709552e+19`", `string "three"`, "sequence", "map"}
	for i, x := range v.([]any) {
		if got := Describe(x); got != want[i] {
			t.Errorf("Describe(%v) = %q, want %q", x, got, want[i])
		}
	}
}
