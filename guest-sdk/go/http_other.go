//go:build !wasip1

package guest

import "bullpen.dev/guest/internal/outbound"

// Outside a bullpen host there is no wasi:http (variables: testing_other.go).

func send(*outbound.Request) (*outbound.Response, error) {
	return nil, &HTTPError{msg: errNoHost.Message}
}
