//! One attempt as a value: the execution core that runs it ([`exec`]) and
//! the typed verdict of what it did ([`verdict`]), shared by the worker
//! (`queue::trigger`), `bullpen run` and the attempt-overhead benchmark, so
//! none of them re-derives how a guest call is made or what it meant.
//!
//! [`input`] is the job as the guest sees it, and the checks it passes
//! before any instance is made.

pub(crate) mod exec;
pub(crate) mod input;
pub(crate) mod verdict;

pub(crate) use verdict::{LimitKind, TrapKind, Verdict};
