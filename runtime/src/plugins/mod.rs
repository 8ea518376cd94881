//! Processor versions: a component loaded, validated against the WIT world
//! and pre-linked ([`plugin`]); which version each queue runs now and the
//! Redis registry of deployed versions ([`registry`]); hot swap from a
//! watched file or the registry ([`deploy`]).

pub(crate) mod deploy;
pub(crate) mod plugin;
pub(crate) mod registry;

pub(crate) use plugin::{new_linker, Plugin};
pub(crate) use registry::PluginSlot;
