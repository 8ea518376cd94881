// The component's imports, as the SDK (index.js) uses them: what `#host`
// resolves to when bullpen-build bundles a processor. Under Node (a
// processor's unit tests) `#host` is testing-host.js instead
// (package.json "imports").
export * as host from 'bullpen:processor/job-context@0.1.0';
export { handle as sendRequest } from 'wasi:http/outgoing-handler@0.2.12';
export { Fields, OutgoingRequest, OutgoingBody, httpErrorCode } from 'wasi:http/types@0.2.12';
export { get as getVariable } from 'wasi:config/store@0.2.0-rc.1';
// The SDK's fetch over wasi:http replaces the global one in a component only.
export const inComponent = true;
