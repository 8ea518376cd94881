module bullpen.dev/guest

go 1.24
