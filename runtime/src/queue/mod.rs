//! BullMQ's side of the house: a binding of a queue to a plugin slot
//! ([`binding`]), the trigger that runs each fetched job's attempt and turns
//! its verdict into BullMQ's transition ([`trigger`]), the threads
//! attempts run on ([`shards`]), and cancel requests reaching running
//! attempts ([`cancel`]).

pub(crate) mod binding;
pub(crate) mod cancel;
pub(crate) mod shards;
pub(crate) mod trigger;

pub(crate) use binding::{Binding, BindingConfig};
pub(crate) use shards::Shards;
