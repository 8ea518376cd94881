//! What operators do to queues and read from them, over Redis: inspect,
//! retry and cancel jobs ([`admin`]; cancelling in `cancel`), counts and live
//! workers ([`stats`], whose heartbeats every binding writes), many jobs
//! added at once ([`bulk`]).

pub mod admin;
pub(crate) mod bulk;
pub(crate) mod cancel;
pub(crate) mod stats;
