module bullpen.dev/bench/floor

go 1.24

require bullpen.dev/guest v0.1.0

replace bullpen.dev/guest => ../../../../guest-sdk/go
