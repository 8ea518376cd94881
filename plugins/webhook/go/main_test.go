package main

import "testing"

// What Rust's String::from_utf8_lossy gives for the same bytes.
func TestLossyIsRustsFromUtf8Lossy(t *testing.T) {
	for in, want := range map[string]string{
		"ok é":              "ok é",
		"cut \xE6\x97":      "cut \uFFFD",
		"a\xff\xfeb":        "a\uFFFD\uFFFDb",
		"\xF0\x9F\x98":      "\uFFFD",
		"\xED\xA0\x80":      "\uFFFD\uFFFD\uFFFD",
		"\xE0\x80x":         "\uFFFD\uFFFDx",
		"\xF4\x90\x80\x80!": "\uFFFD\uFFFD\uFFFD\uFFFD!",
		"\uFFFD":            "\uFFFD",
	} {
		if got := lossy([]byte(in)); got != want {
			t.Errorf("lossy(%q) = %q, want %q", in, got, want)
		}
	}
}
