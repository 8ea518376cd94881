package guest

// Version is this SDK's version: the version of the WIT package it
// implements (bullpen:processor@0.1.0), also its module version (v0.1.0).
// scripts/package-sdks.sh checks that they agree.
const Version = "0.1.0"
