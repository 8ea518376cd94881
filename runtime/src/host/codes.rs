//! The negative codes BullMQ's Lua scripts (and bullpen's lock-checked
//! scripts, which use the same ones) return instead of raising an error,
//! and what each means for the attempt that got it.

/// The job's hash is missing (removed while the attempt ran).
pub(crate) const JOB_MISSING: i64 = -1;
/// The job's lock key is missing: the lock expired or was released.
pub(crate) const LOCK_MISSING: i64 = -2;
/// The job is not in the state the script expects (e.g. not active).
pub(crate) const NOT_IN_STATE: i64 = -3;
/// The job's lock is held with another token: another worker owns it now.
pub(crate) const LOCK_MISMATCH: i64 = -6;

/// Whether `code` says this attempt no longer owns the job.
pub(crate) fn lock_lost(code: i64) -> bool {
    code == LOCK_MISSING || code == LOCK_MISMATCH
}
