//go:build !wasip1

package guest

// Outside a bullpen host (go test, go vet on the build machine) every host
// call is refused; tests install their own host.

type noHost struct{}

func init() { host = noHost{} }

var errNoHost = &HostError{Kind: Unavailable, Message: "not running inside a bullpen host (build with GOOS=wasip1 GOARCH=wasm)"}

func (noHost) updateData(string) error                                 { return errNoHost }
func (noHost) updateProgress(string) error                             { return errNoHost }
func (noHost) log(string) error                                        { return errNoHost }
func (noHost) moveToDelayed(uint64) error                              { return errNoHost }
func (noHost) rateLimit(uint64) error                                  { return errNoHost }
func (noHost) moveToWait() error                                       { return errNoHost }
func (noHost) addChild(string, string, string, string) (string, error) { return "", errNoHost }
func (noHost) waitForChildren() (bool, error)                          { return false, errNoHost }
func (noHost) childrenValues() ([]rawChild, error)                     { return nil, errNoHost }
func (noHost) setStacktrace(string)                                    {}

func trap() { panic("bullpen guest: trap") }
