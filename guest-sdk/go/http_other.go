//go:build !wasip1

package guest

import "net/http"

// Outside a bullpen host there is no wasi:http and no variable store.

func roundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	return nil, &HTTPError{msg: errNoHost.Message}
}

func storeGet(string) (configGet, error) { return configGet{}, errNoHost }
