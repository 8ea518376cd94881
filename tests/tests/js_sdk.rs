//! The JavaScript guest SDK's own unit tests (guest-sdk/js/test, Node's test
//! runner against a mock host), run from here so CI runs them. The SDK with
//! the real host is covered by the conformance suite's JS plugins.

use std::process::Command;

use bullpen_tests::root;

#[test]
fn js_sdk_unit_tests() {
    let sdk = root().join("guest-sdk/js");
    assert!(sdk.join("node_modules/esbuild").exists(), "guest-sdk/js/node_modules missing: run scripts/setup.sh");
    let out = Command::new("node").args(["--test", "test/sdk.test.mjs"]).current_dir(&sdk).output().expect("node");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "guest-sdk/js tests failed:\n{text}");
    assert!(text.contains("# fail 0") && !text.contains("# pass 0"), "{text}");
}
