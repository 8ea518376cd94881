//! Which plugin version a queue runs now. Attempts take an `Arc` of the
//! current plugin when they start, so a swap never disturbs a running
//! attempt: it finishes on the version it started with.

use std::sync::{Arc, RwLock};

use crate::plugin::Plugin;

/// The current plugin of one binding; swapped atomically.
pub struct PluginSlot {
    current: RwLock<Arc<Plugin>>,
}

impl PluginSlot {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        PluginSlot { current: RwLock::new(plugin) }
    }

    /// The version new attempts use.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.read().unwrap().clone()
    }

    /// Make `plugin` current; returns the previous version.
    pub fn swap(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        std::mem::replace(&mut *self.current.write().unwrap(), plugin)
    }
}
